"""`harmon edit`: instruction editing, the picture in the model's view while it draws.

    harmon edit scene.png "make the circle blue" -o out.png --image-cfg 1.5 --cfg 3
    harmon edit scene.png "put this shape on the left" --also reference.png -o out.png   # several pictures
    harmon edit scene.png "make the circle blue" --mask mask.png -o out.png              # edit inside a mask

Draws with `HarmonImageEditPipeline`: IMAGE, and each `--also` picture after it, reach the LLM through the
understanding path before the instruction, and the model draws a new image. `--image-cfg` is the guidance scale of
the pictures (1 = off; default: the model's), `--cfg` that of the instruction. With `--mask` (white = redraw), IMAGE
is also the canvas: its other tokens are kept and its size is the output's; without it the output has `--size`
(default: the model's). Images, seeds and metadata follow `harmon generate` (image k uses seed + k; the PNG's
`harmon` text chunk records the instruction, the settings, "mode": "edit" and the SHA-256 of every input file).
Another turn edits the result: `harmon edit out.png "now remove the square" -o out2.png`. Many edits, resumable and
sharded over processes: JSONL lines with "edit" (a path or a list of paths) for `harmon generate --prompts` (see its
--help). A model whose config says it was not trained for editing draws anyway, with a warning.
"""

import argparse
import hashlib
import math
import sys
from pathlib import Path

from modeling_harmon.modeling_harmon_settings import EDIT_MODES, HarmonSettingError
from modeling_harmon.pipeline_harmon_edit import HarmonImageEditPipeline, edit_training_warning

from .cli import (
    IMAGES_PER_CALL,
    MAX_IMAGES,
    CommandError,
    _load,
    _positive_int_argument,
    _seed_argument,
    _settings_options,
    _show,
    check_device,
    draw_to_files,
    output_paths,
    read_image,
    regular_file,
    resolve_settings,
)


EDIT_FIELDS = (
    "height",
    "width",
    "num_iter",
    "num_sampling_steps",
    "guidance_scale",
    "image_guidance_scale",
    "temperature",
    "candidates",
)


def add_edit_command(commands, add_setting_arguments, add_model_arguments) -> None:
    """The `edit` subcommand, on `commands` (the `harmon` parser's subparsers)."""
    parser = commands.add_parser(
        "edit",
        help="edit a picture by an instruction",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", type=Path, help="the picture to edit (any format PIL reads)")
    parser.add_argument("prompt", help='the instruction, e.g. "make the circle blue"')
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        metavar="IMAGE",
        help="a further picture the model sees after IMAGE (repeatable), e.g. a reference",
    )
    parser.add_argument(
        "--mask", type=Path, metavar="MASK", help="edit inside the mask only (white = redraw; IMAGE's size)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.png", help="PNG file to write")
    parser.add_argument("-n", "--num-images", type=_positive_int_argument, default=1, metavar="N")
    parser.add_argument("--seed", type=_seed_argument, default=0, help="seed of image 0; image k uses seed + k")
    parser.add_argument("--batch-size", type=_positive_int_argument, default=IMAGES_PER_CALL, metavar="B")
    parser.add_argument("--max-images", type=_positive_int_argument, default=MAX_IMAGES, metavar="N")
    parser.add_argument(
        "--edit-mode",
        choices=EDIT_MODES,
        help="direct: draw with the picture in view; describe: the model writes what the edited picture shows "
        "(printed after each file name and kept in its metadata), then draws it (default: the model's)",
    )
    add_setting_arguments(parser, EDIT_FIELDS)
    add_model_arguments(parser)
    parser.set_defaults(run=run_edit)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_cfg_setting(model, value, sampling, shown: str) -> float:
    """The image guidance scale for `value` (None: the model's), validated by the settings object; a bad value is a
    [`CommandError`] prefixed by `shown` (e.g. `--image-cfg 0.5`)."""
    try:
        return model.image_generation_settings(sampling, image_guidance_scale=value).image_guidance_scale
    except HarmonSettingError as error:
        raise CommandError(f"{shown}: {error}") from None


def run_edit(args) -> None:
    check_device(args.device)
    if args.output.suffix.lower() == ".png" and not args.prompt.strip():  # a bad -o/--output is named first
        raise CommandError("PROMPT (the instruction) must not be empty")
    cfg = args.image_cfg
    if cfg is not None and not (math.isfinite(cfg) and cfg >= 1.0):  # refused before the model loads
        raise CommandError(f"--image-cfg {cfg}: must be a finite number >= 1 (1 disables image guidance)")
    if args.mask is not None and args.size is not None:
        raise CommandError("--size does not apply with --mask: IMAGE is the canvas, and its size is the output's")
    paths = output_paths(args)
    files = [(args.image, "IMAGE"), *((path, "--also") for path in args.also)]
    # Each file is read once: what is drawn is what its recorded hash says.
    data = [regular_file(path, f"{shown} {str(path)!r}").read_bytes() for path, shown in files]
    pictures = [read_image(path, shown, data=raw) for (path, shown), raw in zip(files, data)]
    inputs = {
        "edit": [str(path) for path, _ in files],
        "edit_sha256": [hashlib.sha256(raw).hexdigest() for raw in data],
    }
    mask = None
    if args.mask is not None:
        mask = read_image(args.mask, "--mask")
        if mask.size != pictures[0].size:
            raise CommandError(
                f"--mask is {mask.width}x{mask.height} pixels but IMAGE is {pictures[0].width}x{pictures[0].height}"
            )
        inputs.update(mask=str(args.mask), mask_sha256=_sha256(args.mask))

    model, tokenizer = _load(args)
    if mask is not None:
        stride = model.config.vae_stride * model.config.patch_size
        if pictures[0].width % stride or pictures[0].height % stride:
            raise CommandError(
                f"IMAGE {str(args.image)!r} is {pictures[0].width}x{pictures[0].height} pixels; with --mask its sides "
                f"must be multiples of {stride} (the model's token stride): resize or crop it"
            )
    options = _settings_options(args)
    settings = resolve_settings(
        model, options, lambda key: f"--{key.replace('_', '-')} {_show(key, options[key])}", args.sampling
    )
    settings["image_guidance_scale"] = image_cfg_setting(model, cfg, args.sampling, f"--image-cfg {_show('cfg', cfg)}")
    settings["edit_mode"] = model.image_generation_settings(args.sampling, edit_mode=args.edit_mode).edit_mode
    if settings["edit_mode"] == "direct" and getattr(args, "candidates", None) is None:
        del settings["candidates"]  # the model's count ranks drawings of text; a direct edit draws once
    if settings["edit_mode"] == "describe" and settings["image_guidance_scale"] != 1.0:
        if cfg is not None:
            raise CommandError(
                f"--image-cfg {_show('cfg', cfg)}: guides the picture while drawing (--edit-mode direct); with "
                "--edit-mode describe the model draws its description, so leave it out"
            )
        settings["image_guidance_scale"] = 1.0  # the model's stored scale is for its direct mode
    if mask is not None:
        settings.update(height=pictures[0].height, width=pictures[0].width)
        if args.steps is None:  # the model scales its iterations by the share of tokens drawn
            settings["num_inference_steps"] = None

    pipe = HarmonImageEditPipeline(model=model, tokenizer=tokenizer)
    warning = edit_training_warning(model.config)
    if warning is not None:  # one line, not Python's two-line warning
        print(f"harmon edit: warning: {warning}", file=sys.stderr)
        pipe._warned_untrained = True
    from harmon_training.shapes.phrasings import warn_unknown_words

    warn_unknown_words("harmon edit", args.prompt, tokenizer)
    try:
        draw_to_files(
            pipe,
            args.prompt,
            paths,
            args.seed,
            args.batch_size,
            settings,
            {"mode": "edit", "inputs": inputs},
            image=pictures,
            mask_image=mask,
        )
    except ValueError as error:
        message = str(error).replace("mask_image", "--mask")
        if message.startswith("image"):  # the pipeline's argument: IMAGE and the --also pictures
            message = ("IMAGE / --also" if args.also else "IMAGE") + message[len("image") :]
        raise CommandError(message) from None
