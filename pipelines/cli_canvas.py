"""`harmon inpaint`, `harmon outpaint` and `harmon vary`: generation that starts from a picture, through the MAR mask.

    harmon inpaint photo.png --mask mask.png "a blue square" -o out.png      # white in the mask = redraw
    harmon outpaint photo.png --right 16 --top 8 "a red circle on the left" -o out.png
    harmon vary photo.png --strength 0.5 -n 4 -o out.png                     # no prompt: the model's own caption

Each command draws with `HarmonInpaintPipeline`: the picture's tokens are kept except those the mask (or the
padding, or `--strength`) selects. The MAR iterations are the model's, scaled by the share of tokens drawn, unless
`--steps` is given. Images, seeds and metadata follow `harmon generate` (image k uses seed + k; the PNG's `harmon`
text chunk records the prompt, where it came from, the settings and the SHA-256 of every input file). Many such
drawings, resumable and sharded over processes: JSONL lines with the same inputs ("image", "mask", "left", ...,
"strength", "paste_back") for `harmon generate --prompts` (see its --help).
"""

import argparse
import hashlib
from pathlib import Path

from modeling_harmon.modeling_harmon_canvas import outpaint_canvas
from modeling_harmon.pipeline_harmon_inpaint import HarmonInpaintPipeline

from .cli import (
    IMAGES_PER_CALL,
    MAX_IMAGES,
    CommandError,
    _load,
    _positive_int_argument,
    _seed_argument,
    _settings_options,
    check_device,
    draw_to_files,
    load_processor,
    output_paths,
    read_image,
    resolve_settings,
)


CANVAS_FIELDS = ("num_iter", "num_sampling_steps", "guidance_scale", "temperature", "candidates")
SIDES = ("left", "right", "top", "bottom")
# What `vary` asks the model for when no prompt is given (the dense-caption instruction of its training data).
CAPTION_QUESTION = "Describe the image in detail."


def _pixels(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels >= 0, got {value!r}")
    return int(value)


def _strength(value: str) -> float:
    try:
        strength = float(value)
    except ValueError:
        strength = -1.0
    if not 0.0 <= strength <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {value!r}")
    return strength


def add_canvas_commands(commands, add_setting_arguments, add_model_arguments) -> None:
    """The three subcommands, on `commands` (the `harmon` parser's subparsers)."""
    for name, summary in (
        ("inpaint", "redraw the part of a picture a mask marks"),
        ("outpaint", "extend a picture beyond its borders"),
        ("vary", "draw variations of a picture"),
    ):
        parser = commands.add_parser(
            name, help=summary, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        parser.add_argument(
            "image", type=Path, help="the picture (sides must be multiples of the model's token stride)"
        )
        if name == "inpaint":
            parser.add_argument(
                "--mask", type=Path, required=True, metavar="MASK", help="white = redraw, black = keep"
            )
        if name == "outpaint":
            for side in SIDES:
                parser.add_argument(
                    f"--{side}", type=_pixels, default=0, metavar="PX", help=f"pixels added on the {side}"
                )
        if name == "vary":
            parser.add_argument(
                "--strength", type=_strength, default=0.5, help="share of tokens redrawn (default 0.5)"
            )
        parser.add_argument(
            "prompt",
            nargs="?" if name == "vary" else None,
            help="what to draw" + (" (default: the model's caption)" if name == "vary" else ""),
        )
        if name != "vary":
            parser.add_argument(
                "--no-paste-back",
                dest="paste_back",
                action="store_false",
                help="keep the drawn pixels outside the mask too (by default the picture's own pixels are put back "
                "there: the VAE round trip changes every pixel a little)",
            )
        parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.png", help="PNG file to write")
        parser.add_argument("-n", "--num-images", type=_positive_int_argument, default=1, metavar="N")
        parser.add_argument("--seed", type=_seed_argument, default=0, help="seed of image 0; image k uses seed + k")
        parser.add_argument("--batch-size", type=_positive_int_argument, default=IMAGES_PER_CALL, metavar="B")
        parser.add_argument("--max-images", type=_positive_int_argument, default=MAX_IMAGES, metavar="N")
        add_setting_arguments(parser, CANVAS_FIELDS)
        add_model_arguments(parser)
        parser.set_defaults(run=run_canvas, canvas=name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _caption(model, tokenizer, model_source, image) -> str:
    """The model's own description of `image` (greedy), the prompt of a variation given none."""
    processor = load_processor(model_source, model, tokenizer)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=text, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :]).strip()


def run_canvas(args) -> None:
    check_device(args.device)
    if args.output.suffix.lower() == ".png" and args.prompt is not None and not args.prompt.strip():
        raise CommandError("PROMPT must not be empty")  # (a bad -o/--output is named first)
    if args.canvas == "outpaint" and not any(getattr(args, side) for side in SIDES):
        raise CommandError("outpaint needs --left, --right, --top or --bottom > 0 (pixels to add)")
    paths = output_paths(args)
    image = read_image(args.image)
    mask = read_image(args.mask, "--mask") if args.canvas == "inpaint" else None
    if mask is not None and mask.size != image.size:
        raise CommandError(f"--mask is {mask.width}x{mask.height} pixels but IMAGE is {image.width}x{image.height}")
    inputs = {"image": str(args.image), "image_sha256": _sha256(args.image)}
    if mask is not None:
        inputs.update(mask=str(args.mask), mask_sha256=_sha256(args.mask))

    model, tokenizer = _load(args)
    stride = model.config.vae_stride * model.config.patch_size
    if image.width % stride or image.height % stride:
        raise CommandError(
            f"IMAGE {str(args.image)!r} is {image.width}x{image.height} pixels; its sides must be multiples of {stride} "
            "(the model's token stride): resize or crop it"
        )
    extra = {}
    if args.canvas == "outpaint":
        pads = {side: getattr(args, side) for side in SIDES}
        try:
            image, mask = outpaint_canvas(image, stride, **pads)
        except ValueError as error:
            raise CommandError(f"--{str(error)}") from None
        inputs.update(pads)
    if args.canvas == "vary":
        extra["strength"] = args.strength
    else:
        extra["paste_back"] = args.paste_back
    prompt, source = args.prompt, "given"
    if prompt is None:
        prompt, source = _caption(model, tokenizer, args.model, image), "the model's caption of IMAGE"
    options = _settings_options(args)
    settings = resolve_settings(model, options, lambda key: f"--{key.replace('_', '-')} {options[key]}", args.sampling)
    settings.update(height=image.height, width=image.width)
    if args.steps is None:  # the model scales its iterations by the share of tokens drawn
        settings["num_inference_steps"] = None

    pipe = HarmonInpaintPipeline(model=model, tokenizer=tokenizer)
    metadata = {"mode": args.canvas, "prompt_source": source, "inputs": inputs, **extra}
    try:
        draw_to_files(
            pipe, prompt, paths, args.seed, args.batch_size, settings, metadata, image=image, mask_image=mask, **extra
        )
    except ValueError as error:
        raise CommandError(str(error).replace("init_image", "IMAGE").replace("mask_image", "--mask")) from None
