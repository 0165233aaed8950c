"""The `harmon` command: draw images, answer questions about an image, convert reference checkpoints, publish them,
score a model on ShapesEval.

    harmon generate "a red circle on the left" -o out.png --seed 0 -n 4        # out_0.png .. out_3.png
    harmon generate --prompts prompts.jsonl --outdir images/ --batch-size 8    # also under torchrun / accelerate
    harmon ask photo.png "what color is the circle?"
    harmon convert --harmon-ckpt harmon_0.5b.pth --vae-ckpt kl16.ckpt --tokenizer Qwen2.5-0.5B-Instruct/ \\
        --llm-config Qwen2.5-0.5B-Instruct/ --mar-config harmon-0.5b --output harmon-0.5b/
    harmon push harmon-0.5b/ --repo-id my-org/harmon-0.5b
    harmon eval shapes --n 180 --json shapes.json                              # ShapesEval: GenEval-like + VQA

Seeds: image k (0-based) of a prompt with seed s is drawn with its own `torch.Generator().manual_seed(s + k)` (a CPU
generator, so the noise is the same on every device). An image therefore depends on its prompt, its seed and the
settings only, not on which other images share its batch, up to float rounding of batched matrix products; runs
that batch the same images together give identical files.

Limits: `generate` refuses image sides above `--max-side` (default 2048 px) and more than `--max-images` images
per command (default 10000), before loading the model; raise the flags to go further. With a PROMPT, the images
are drawn `--batch-size` at a time (default 8), which gives the same images as one call, up to float rounding.

Without `--model`, the command runs the model packaged in `harmon_pipelines/default_model/`, or, while none is
packaged, a tiny RANDOMLY INITIALISED Harmon (it says so on stderr). Mistakes in the arguments or inputs (bad
values, unreadable files, a model folder whose weights do not cover the model, a device this machine lacks, running
out of memory while drawing) end the command with exit status 2 and a one-line message on stderr.
"""

import argparse
import dataclasses
import io
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_harmon.atomic_files import write_json, write_png
from modeling_harmon.convert_harmon_weights_to_hf import (
    UnreadableCheckpointError,
    add_arguments,
    convert_harmon_checkpoint,
)
from modeling_harmon.image_processing_harmon import to_rgb_image
from modeling_harmon.modeling_harmon_settings import HarmonImageGenerationSettings, HarmonSettingError
from modeling_harmon.pipeline_harmon import HarmonPipeline

from .default_model import RANDOM_MODEL_NAME, load_model_and_tokenizer, load_processor
from .hub import push_hub_folder, write_hub_files


JOBS_FORMAT = """\
--prompts FILE.jsonl holds one JSON object per line (blank lines are skipped):

    {"prompt": "a red circle"}
    {"prompt": "a blue square", "seed": 7, "size": "256x512", "steps": 32, "head_steps": 50, "cfg": 4.0,
     "temperature": 0.9}
    {"prompt": "a green triangle", "image": "scene.png", "mask": "mask.png"}
    {"prompt": "a wider scene", "image": "scene.png", "left": 64, "right": 64, "paste_back": false}
    {"prompt": "a red circle", "image": "/data/scene.png", "strength": 0.5}
    {"prompt": "make the circle blue", "edit": "scene.png", "image_cfg": 1.5}
    {"prompt": "put this shape on the left", "edit": ["scene.png", "shape.png"], "mask": "mask.png"}

"prompt" is required; the other keys override the command-line settings of the same name for that line (size:
"HxW", "N" or N). Line L (1-based, as editors count) with seed s gives images LLLLL_k.png (k = 0 .. n-1, drawn
with seed s + k), each followed by LLLLL_k.json (prompt, seed s + k, settings, model, line, k). The JSON is
written after the PNG, both atomically, so a JSON marks a finished image: a rerun skips the images whose JSON
matches what it would draw now and redraws those without a readable JSON. An image whose JSON holds another
prompt, seed, settings, model or input file (the file, the flags or an input changed) is refused, naming it,
unless --overwrite, which redraws it.

Image lines draw as `harmon inpaint`, `outpaint` and `vary` do: "image" (a file path, relative to the JSONL file's
folder unless absolute) with "mask" (a file of the same size, white = redraw: inpaint), or "left", "right", "top",
"bottom" (pixels added: outpaint), or "strength" (the share of tokens redrawn, 0 to 1: vary); one of the three.
"paste_back" (true or false, default true: the picture's own pixels are put back outside the mask) applies to
inpaint and outpaint. The picture (plus padding) sets the size, so an image line takes no "size" (--size applies
to text lines); its sides and the padding must be multiples of the model's token stride. Without "steps" or
--steps, the MAR iterations are the model's, scaled by the share of tokens drawn. "prompt" is required here too
(`harmon vary` alone can caption the picture itself). The JSON of such an image also records "mode", "strength" or
"paste_back", and "inputs": each input file's path as given with its SHA-256 (and the padding), so a rerun notices
an input file whose bytes changed.

Edit lines draw as `harmon edit` does: "edit" is the picture the instruction ("prompt") is about, a file path or a
list of them (relative to the JSONL file's folder unless absolute; the first is the picture edited, the others
further pictures the model sees, as `--also`); "image_cfg" (>= 1, default the model's) is their guidance scale.
With "mask" (white = redraw) the first picture is also the canvas and sets the size (no "size" then); without it,
"size" and --size apply as for text lines. No "image" key and no outpaint or vary keys go with "edit". The JSON
records "mode": "edit", "settings" with "image_guidance_scale", and "inputs": the pictures as given ("edit", a list)
with their SHA-256 ("edit_sha256") and the mask's, so a rerun notices a picture whose bytes changed.

Batches of --batch-size consecutive lines with equal settings (image lines: also the same mode, strength,
paste_back and picture, i.e. image bytes, mask and padding, since the inpaint pipeline takes one picture per call;
edit lines: the same mask, if any) are formed from the whole file and dealt out to the processes of a torchrun /
accelerate launch (batch i to rank i % WORLD_SIZE), so the files are the same whatever the number of processes. A batch with any image missing is
drawn again in full and only the missing images are written, so a resumed job gives the same files as an
uninterrupted one.
"""

# The image-generation settings (fields of `HarmonImageGenerationSettings`) that `harmon generate` takes as flags and
# JSONL keys; the others keep the model's defaults. Flags, help and the pipeline's names come from the fields.
GENERATE_FIELDS = (
    "height",
    "width",
    "num_iter",
    "num_sampling_steps",
    "guidance_scale",
    "temperature",
    "candidates",
)
# The settings an image is drawn with and recorded by (its JSON sidecar), under the pipeline's argument names.
DRAWN_FIELDS = (*GENERATE_FIELDS, "cfg_schedule")


def _setting_keys(fields: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Flag as a JSONL / argparse key (`--head-steps` -> `head_steps`) -> the fields it sets (`--size`: two)."""
    keys = {}
    for field in fields:
        key = HarmonImageGenerationSettings.flags()[field][2:].replace("-", "_")
        keys[key] = keys.get(key, ()) + (field,)
    return keys


SETTINGS = _setting_keys(GENERATE_FIELDS)
PIPELINE_NAMES = {field: alias for alias, field in HarmonImageGenerationSettings.aliases().items()}
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes unsigned 64-bit seeds
DTYPES = ("float32", "bfloat16", "float16")
# Defaults of --max-side and --max-images: larger requests are mistakes far more often than intentions, and would
# end in a multi-GB allocation or an aborted process instead of a message.
MAX_SIDE = 2048
MAX_IMAGES = 10_000
IMAGES_PER_CALL = 8  # with a PROMPT and no --batch-size: images drawn per model call
OUT_OF_MEMORY = ("out of memory", "not enough memory")  # torch's (CUDA, MPS, CPU allocator) and MemoryError's


class CommandError(Exception):
    """A mistake in the command's arguments or inputs: reported as one line, exit status 2."""


class _UsageError(CommandError):
    def __init__(self, message: str, prog: str):
        super().__init__(f"{message} (see {prog} --help)")
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become one line (see `main`) instead of the usage text."""

    def error(self, message: str):
        raise _UsageError(message, self.prog)


# ------------------------------------------------------------------------------------------------- arguments
def _size(value: str | int) -> tuple[int, int]:
    """(height, width) from "HxW" or "N" (a square) or an int N."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    parts = value.lower().split("x") if isinstance(value, str) else []
    if len(parts) in (1, 2) and all(part.strip().isdigit() for part in parts):
        sides = [int(part) for part in parts]
        return sides[0], sides[-1]
    raise ValueError(f"size must be HxW or N in pixels (e.g. 256x512 or 256), got {value!r}")


def _size_argument(value: str) -> tuple[int, int]:
    try:
        return _size(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seed_argument(value: str) -> int:
    if not value.isdigit() or int(value) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be an integer in [0, 2**64 - 1], got {value!r}")
    return int(value)


def _positive_int_argument(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return int(value)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_REPO",
        help="Harmon folder or Hub repo id (default: the packaged model, else a tiny random one)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: GPU number LOCAL_RANK when CUDA is available, else cpu)"
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weight precision (default: float32)")


def _add_setting_arguments(parser: argparse.ArgumentParser, fields: tuple[str, ...]) -> None:
    """The flags of `fields` (their type and help from `HarmonImageGenerationSettings`), plus `--sampling` (with
    `--preset`, its older name); left out, a setting is the model's own."""
    types = {field.name: field.type for field in dataclasses.fields(HarmonImageGenerationSettings)}
    helps = {field.name: field.metadata["help"] for field in dataclasses.fields(HarmonImageGenerationSettings)}
    for key, names in _setting_keys(fields).items():
        flag = "--" + key.replace("_", "-")
        if names == ("height", "width"):
            parser.add_argument(
                flag,
                type=_size_argument,
                metavar="HxW",
                dest=key,
                help="image size in pixels, HxW or N for a square (default: the model's)",
            )
            continue
        kind = int if "int" in str(types[names[0]]) else float
        parser.add_argument(
            flag,
            type=kind,
            metavar="N" if kind is int else "X",
            dest=key,
            help=f"{helps[names[0]]} (default: the model's)",
        )
    parser.add_argument(
        "--sampling",
        "--preset",
        dest="sampling",
        metavar="NAME",
        help="a named sampling preset of the model (e.g. fast), under the flags given "
        "(generation_config.image_generation_presets; --preset is its older name)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `harmon` argument parser with its five subcommands."""
    parser = _Parser(prog="harmon", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{generate,ask,edit,inpaint,outpaint,vary,convert,push,eval}"
    )

    generate = commands.add_parser(
        "generate",
        help="draw images from a prompt or a JSONL file of prompts",
        epilog=JOBS_FORMAT,
        description="Draw images from text. Settings left out come from the model's generation_config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument("prompt", nargs="?", help="what to draw (or use --prompts)")
    generate.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE.png",
        help="PNG file to write (with -n N: STEM_0.png .. STEM_{N-1}.png)",
    )
    generate.add_argument("--prompts", type=Path, metavar="FILE.jsonl", help="batch mode: one JSON object per line")
    generate.add_argument("--outdir", type=Path, metavar="DIR", help="batch mode: folder for the images")
    generate.add_argument(
        "--batch-size",
        type=_positive_int_argument,
        default=None,
        metavar="B",
        help="batch mode: prompt lines drawn together (B x N images per model call; default 1); "
        f"with a PROMPT: images per model call (default {IMAGES_PER_CALL})",
    )
    generate.add_argument(
        "-n", "--num-images", type=_positive_int_argument, default=1, metavar="N", help="images per prompt (default 1)"
    )
    generate.add_argument(
        "--seed", type=_seed_argument, default=0, help="seed of image 0; image k uses seed + k (default 0)"
    )
    _add_setting_arguments(generate, GENERATE_FIELDS)
    generate.add_argument(
        "--overwrite",
        action="store_true",
        help="batch mode: redraw images whose JSON records another prompt, seed, settings, model or input file "
        "(without it such images are refused)",
    )
    generate.add_argument(
        "--max-side",
        type=_positive_int_argument,
        default=MAX_SIDE,
        metavar="PX",
        help=f"refuse image sides above PX pixels (default {MAX_SIDE})",
    )
    generate.add_argument(
        "--max-images",
        type=_positive_int_argument,
        default=MAX_IMAGES,
        metavar="N",
        help=f"refuse commands that would draw more than N images in all (default {MAX_IMAGES})",
    )
    _add_model_arguments(generate)
    generate.set_defaults(run=run_generate)

    ask = commands.add_parser(
        "ask",
        help="answer a question about an image (greedy decoding)",
        description="Print Harmon's greedy answer to a question about an image.",
    )
    ask.add_argument("image", type=Path, help="image file (any format PIL reads)")
    ask.add_argument("question")
    ask.add_argument(
        "--max-new-tokens",
        type=_positive_int_argument,
        default=64,
        metavar="N",
        help="longest answer in tokens (default 64)",
    )
    _add_model_arguments(ask)
    ask.set_defaults(run=run_ask)

    convert = commands.add_parser(
        "convert",
        help="convert a reference checkpoint into a Hub-ready folder",
        description="Convert a reference Harmon checkpoint into a folder with the full Hub layout (transformers, "
        "diffusers, processor, model card), ready for `harmon push`.",
    )
    add_arguments(convert)
    convert.set_defaults(run=run_convert)

    push = commands.add_parser(
        "push",
        help="upload a converted folder to the Hugging Face Hub",
        description="Create the Hub repo if needed and upload a folder written by `harmon convert` or by training. "
        "The embedded Shapes model's compact folder (no remote code, no diffusers components) is completed in a "
        "temporary copy first; any other incomplete folder is refused.",
    )
    push.add_argument("folder", type=Path)
    push.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, metavar="REV", help="branch to upload to (created if needed)")
    push.add_argument("--token", default=None, help="Hub token (default: the saved login or HF_TOKEN)")
    push.set_defaults(run=run_push)

    # Imported here: these modules import this one's helpers.
    from .cli_canvas import add_canvas_commands
    from .cli_demo import add_demo_commands
    from .cli_edit import add_edit_command
    from .cli_eval import add_eval_command
    from .cli_tune import add_tune_command

    add_eval_command(commands, _add_setting_arguments, _add_model_arguments)
    add_canvas_commands(commands, _add_setting_arguments, _add_model_arguments)
    add_edit_command(commands, _add_setting_arguments, _add_model_arguments)
    add_demo_commands(commands, _add_model_arguments)
    add_tune_command(commands, _add_setting_arguments, _add_model_arguments)
    return parser


# --------------------------------------------------------------------------------------------------- runtime
def _launch() -> dict[str, int]:
    """RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE as torchrun / `accelerate launch` set them; a plain
    process is rank 0 of 1."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1)):
        raw = os.environ.get(name, str(default))
        if not raw.isdigit():
            raise CommandError(f"environment variable {name} must be a non-negative integer, got {raw!r}")
        values[name] = int(raw)
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        rank, world = values["RANK"], values["WORLD_SIZE"]
        raise CommandError(f"environment variable RANK={rank} must be in [0, WORLD_SIZE={world})")
    return values


def check_device(value: str | None) -> None:
    """Refuse a `--device` that is not a torch device or that this machine lacks, before the model loads."""
    if value is None:
        return
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {value!r} is not a torch device; use e.g. cpu, cuda, cuda:1 or mps") from None
    if device.type in ("cpu", "meta"):
        return
    if device.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:
        backend = getattr(torch, device.type, None)  # torch.cuda, torch.xpu, ...
        available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
        count = backend.device_count() if available and hasattr(backend, "device_count") else 1
    if not available:
        raise CommandError(f"--device {value!r}: this machine has no {device.type} device; use --device cpu")
    if device.index is not None and device.index >= count:
        raise CommandError(f"--device {value!r}: this machine has {count} {device.type} device(s), numbered from 0")


def regular_file(path: Path, shown: str) -> Path:
    """`path` if it is a regular file; else a [`CommandError`] that says what it is (`shown`: e.g. "IMAGE 'x'").
    A FIFO would block the reader forever, a folder fail with an unrelated message."""
    if not path.exists():
        raise CommandError(f"{shown}: no such file")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise CommandError(f"{shown} is {what}; give a file")
    return path


def check_writable_folder(folder: Path, shown: str) -> None:
    """Refuse `folder` (created later if missing) unless its first existing ancestor is a writable folder, so that
    a bad output path is found before the model loads and draws, not after."""
    existing = next((path for path in (folder, *folder.parents) if path.exists()), Path("."))
    if not existing.is_dir():
        raise CommandError(f"{shown}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{shown}: cannot write in the folder {str(existing)!r} (permission denied)")


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _load(args):
    """(model, tokenizer) for `--model`, `--device` (checked by the caller: [`check_device`]) and `--dtype`, with
    torch's threads set for this process."""
    launch = _launch()
    if "OMP_NUM_THREADS" not in os.environ:
        # torch would give every process all cores; processes launched together would oversubscribe them.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(1, launch["LOCAL_WORLD_SIZE"])))
    device = args.device
    if device is None:
        # Processes of a launch share the GPUs of their machine round-robin.
        device = f"cuda:{launch['LOCAL_RANK'] % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    try:
        return load_model_and_tokenizer(args.model, device=device, dtype=getattr(torch, args.dtype))
    except Exception as error:  # a damaged folder fails in torch, safetensors, transformers or the config class
        if args.model is None or isinstance(error, MemoryError):
            raise
        what = "the Harmon folder" if Path(args.model).is_dir() else "a Hub repo id (there is no such folder)"
        raise CommandError(f"--model {args.model!r}: cannot load it as {what}: {_reason(error)}") from None


def _model_name(model) -> str:
    return model.name_or_path or RANDOM_MODEL_NAME


# -------------------------------------------------------------------------------------------------- generate
def resolve_settings(model, options: dict, describe: Callable[[str], str], sampling: str | None = None) -> dict:
    """`HarmonPipeline` arguments (every drawn setting filled in and validated) for `options`, which maps the
    keys of `SETTINGS` to a value or None (None: the model's default); `size` is a (height, width) pair.

    A bad value raises [`CommandError`] with the model's message, prefixed by `describe(key)` (e.g. `--steps 0`).
    """
    given = {}
    for key, names in SETTINGS.items():
        value = options.get(key)
        given.update(zip(names, value) if key == "size" and value is not None else dict.fromkeys(names, value))
    try:
        resolved = model.image_generation_settings(sampling, **given).to_dict()
    except HarmonSettingError as error:
        if error.field == "sampling":
            raise CommandError(f"--sampling {sampling}: {error}") from None
        key = next((key for key, names in SETTINGS.items() if error.field in names), None)
        raise CommandError(f"{describe(key)}: {error}" if key else str(error)) from None
    return {PIPELINE_NAMES.get(name, name): resolved[name] for name in DRAWN_FIELDS}


def image_metadata(prompt: str, seed: int, settings: dict, model_name: str) -> dict:
    """What reproduces an image: `HarmonPipeline(prompt, **settings,
    generator=torch.Generator().manual_seed(seed))` with `model_name`."""
    return {"prompt": prompt, "seed": seed, "settings": settings, "model": model_name}


def draw(pipe, prompts: list[str], seeds: list[int], settings: dict, **inputs) -> list:
    """PIL images, image i drawn from `prompts[i]` with its own generator seeded `seeds[i]` (`inputs`: the image
    inputs of an image-conditioned pipeline). Running out of memory is a [`CommandError`] that says what to shrink."""
    return draw_output(pipe, prompts, seeds, settings, **inputs).images


def draw_output(pipe, prompts: list[str], seeds: list[int], settings: dict, **inputs):
    """[`draw`]'s pipeline output, with whatever else the pipeline returns (an edit's `descriptions`)."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    try:
        return pipe(prompt=prompts, generator=generators, output_type="pil", **settings, **inputs)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not any(text in str(error).lower() for text in OUT_OF_MEMORY) and not isinstance(error, MemoryError):
            raise
        size = f"{settings['height']}x{settings['width']}"
        raise CommandError(
            f"out of memory drawing {len(prompts)} image(s) of {size} at once on "
            f"{pipe.model.device}; use a smaller --size or --batch-size"
        ) from None


def save(image, path: Path, metadata: dict) -> None:
    """The PNG with `prompt` and `harmon` (the metadata as JSON) text chunks."""
    write_png(image, path, {"prompt": metadata["prompt"], "harmon": json.dumps(metadata, ensure_ascii=False)})


def _settings_options(args) -> dict:
    """The settings given on the command line (None where left out), keyed as in `SETTINGS`."""
    return {key: getattr(args, key, None) for key in SETTINGS}


def _show(key: str, value) -> str:
    """A setting as the user typed it (a size as HxW; a JSON value as JSON), or the model's default if not given."""
    if value is None:
        return "(the model's default)"
    if key == "size" and isinstance(value, tuple):
        return f"{value[0]}x{value[1]}"
    return json.dumps(value) if isinstance(value, (bool, str)) else str(value)


def check_size(size: tuple[int, int] | None, max_side: int, shown: str) -> None:
    """Refuse a size with a side above `max_side` (`--max-side`) before the model loads: the model would try to
    allocate it."""
    if size is not None and max(size) > max_side:
        raise CommandError(
            f"{shown}: sides above --max-side {max_side} px are refused; pass a larger --max-side to allow them"
        )


def output_paths(args) -> list[Path]:
    """The files `-o/--output FILE.png` and `-n N` name (FILE_k.png for k = 0 .. N-1 when N > 1), checked before the
    model loads: a .png name, N within --max-images, the seeds within range, no folder in the way, a writable
    folder. Shared by `harmon generate`, `inpaint`, `outpaint`, `vary` and `edit`."""
    if args.output.suffix.lower() != ".png":
        raise CommandError(f"-o/--output must name a .png file, got {str(args.output)!r}")
    n = args.num_images
    if n > args.max_images:
        raise CommandError(
            f"-n {n}: more than --max-images {args.max_images} images are refused; pass a larger "
            "--max-images to allow them"
        )
    if args.seed + n - 1 > MAX_SEED:
        raise CommandError(f"--seed {args.seed} with -n {n}: the seeds seed .. seed + n - 1 must stay <= 2**64 - 1")
    paths = [args.output] if n == 1 else [args.output.with_name(f"{args.output.stem}_{k}.png") for k in range(n)]
    for path in paths:
        if path.is_dir():
            raise CommandError(f"-o/--output {str(args.output)!r}: {str(path)!r} is a folder; give a new file name")
    check_writable_folder(args.output.parent, f"-o/--output {str(args.output)!r}")
    return paths


def draw_to_files(
    pipe, prompt: str, paths: list[Path], seed: int, chunk: int, settings: dict, metadata: dict | None = None, **inputs
) -> None:
    """Draw image k of `paths` from `prompt` with seed + k, `chunk` images per call (bounded memory however many),
    and save each with its metadata (plus `metadata`, e.g. the mode and input hashes); one progress bar over images
    when there are several calls. `inputs`: the image inputs of an image-conditioned pipeline."""
    n, model_name = len(paths), _model_name(pipe.model)
    pipe.set_progress_bar_config(disable=n > chunk)  # several calls: one bar over images below
    with tqdm(total=n, unit="image", disable=n <= chunk) as progress:
        for start in range(0, n, chunk):
            seeds = [seed + k for k in range(start, min(n, start + chunk))]
            output = draw_output(pipe, [prompt] * len(seeds), seeds, settings, **inputs)
            descriptions = getattr(output, "descriptions", None) or [None] * len(seeds)
            paths[0].parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
            for image, image_seed, path, text in zip(output.images, seeds, paths[start:], descriptions):
                extra = {} if text is None else {"description": text}  # an edit's own account of what it drew
                save(
                    image,
                    path,
                    {**image_metadata(prompt, image_seed, settings, model_name), **(metadata or {}), **extra},
                )
                print(path if text is None else f"{path}\t{text}")
                progress.update()


def run_generate(args) -> None:
    check_device(args.device)
    batch_mode = args.prompts is not None
    if batch_mode:
        if args.prompt is not None or args.output is not None:
            raise CommandError("give either PROMPT with -o/--output, or --prompts with --outdir, not both")
        if args.outdir is None:
            raise CommandError("--prompts needs --outdir DIR (the folder for the images)")
        return _generate_jobs(args)
    if args.prompt is None:
        raise CommandError("give a PROMPT (with -o/--output FILE.png) or --prompts FILE.jsonl (with --outdir DIR)")
    if args.output is None:
        raise CommandError("PROMPT needs -o/--output FILE.png")
    if args.outdir is not None:
        raise CommandError("--outdir belongs to batch mode (--prompts); with a PROMPT, use -o/--output FILE.png")
    if args.overwrite:
        raise CommandError("--overwrite belongs to batch mode (--prompts); with a PROMPT, -o/--output is replaced")
    if args.output.suffix.lower() == ".png" and not args.prompt.strip():  # a bad -o/--output is named first
        raise CommandError("PROMPT must not be empty")
    paths = output_paths(args)
    check_size(args.size, args.max_side, f"--size {_show('size', args.size)}")

    model, tokenizer = _load(args)
    options = _settings_options(args)
    settings = resolve_settings(
        model, options, lambda key: f"--{key.replace('_', '-')} {_show(key, options[key])}", args.sampling
    )
    default = (settings["height"], settings["width"])
    check_size(default, args.max_side, f"--size (the model's default, {_show('size', default)})")
    from harmon_training.shapes.phrasings import warn_unknown_words

    warn_unknown_words("harmon generate", args.prompt, tokenizer)  # once the arguments have passed every check
    pipe = HarmonPipeline(model=model, tokenizer=tokenizer)
    # Bounded memory however large -n is; seeds stay seed + k.
    draw_to_files(pipe, args.prompt, paths, args.seed, args.batch_size or IMAGES_PER_CALL, settings)


def _write_sidecar(record: dict, path: Path) -> None:
    """`write_json` as this module's name says when called, so that a test can stop a run between PNG and sidecar."""
    write_json(record, path)


def _generate_jobs(args) -> None:
    """Batch mode: the machinery is `batch_jobs`'; this gives it the command's flags and `harmon generate`'s layout."""
    from .batch_jobs import Layout, read_jobs, resolve_jobs, run_jobs

    regular_file(args.prompts, f"--prompts {str(args.prompts)!r}")
    layout = Layout(args.outdir)
    layout.check()
    n = args.num_images
    options = _settings_options(args)
    jobs = read_jobs(args.prompts, seed=args.seed, num_images=n, options=options, max_side=args.max_side)
    if len(jobs) * n > args.max_images:
        raise CommandError(
            f"--prompts {str(args.prompts)!r} with -n {n} asks for {len(jobs) * n} images; more than "
            f"--max-images {args.max_images} are refused; pass a larger --max-images to allow them"
        )
    launch = _launch()
    model, tokenizer = _load(args)
    jobs = resolve_jobs(jobs, model, sampling=args.sampling, max_side=args.max_side)
    run_jobs(
        jobs,
        layout,
        model,
        tokenizer,
        num_images=n,
        batch_size=args.batch_size or 1,
        overwrite=args.overwrite,
        rank=launch["RANK"],
        world_size=launch["WORLD_SIZE"],
        write_sidecar=_write_sidecar,
    )


# ------------------------------------------------------------------------------------------------------- ask
def read_image(path: Path, shown: str = "IMAGE", data: bytes | None = None):
    """The image at `path` as an RGB PIL image; a missing or unreadable file, or one too large to decode safely
    (PIL's decompression-bomb limit, whose warning is treated as the error), is a [`CommandError`] naming `shown`.
    `data`: the file's bytes, already read (and hashed) by the caller, decoded instead of reading the file again."""
    if data is None:
        regular_file(path, f"{shown} {str(path)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as image:
                return to_rgb_image(image)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CommandError(f"{shown} {str(path)!r} is not an image PIL can read ({error})") from None


def run_ask(args) -> None:
    check_device(args.device)
    if not args.question.strip():
        raise CommandError("QUESTION must not be empty")
    image = read_image(args.image)
    model, tokenizer = _load(args)
    processor = load_processor(args.model, model, tokenizer)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=text, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    from harmon_training.shapes.phrasings import warn_unknown_words

    warn_unknown_words("harmon ask", args.question, tokenizer)  # once the inputs have passed every check
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(processor.decode(output[0, inputs["input_ids"].shape[1] :]).strip())


# --------------------------------------------------------------------------------------------- convert, push
def run_convert(args) -> None:
    checkpoints = {"--harmon-ckpt": args.harmon_ckpt, "--vae-ckpt": args.vae_ckpt}
    for flag, value in checkpoints.items():
        if value is not None:
            regular_file(Path(value), f"{flag} {value!r}")
    try:
        convert_harmon_checkpoint(
            args.harmon_ckpt,
            args.vae_ckpt,
            args.tokenizer,
            args.llm_config,
            args.mar_config,
            args.output,
            finalize=write_hub_files,  # called as (folder, model, tokenizer) before the folder is renamed into place
            image_size=args.image_size,
            overwrite=args.overwrite,
        )
    except UnreadableCheckpointError as error:
        flags = [flag for flag, value in checkpoints.items() if value is not None and Path(value) == error.path]
        raise CommandError(" ".join([*flags[:1], str(error)])) from None


def run_push(args) -> None:
    info = push_hub_folder(args.folder, args.repo_id, private=args.private, revision=args.revision, token=args.token)
    print(info.commit_url)


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Run `harmon` with `argv` (default: the command line); returns the exit status."""
    parser = build_parser()
    prog = "harmon"
    # transformers' weight-loading progress bar would break the one-line error contract on stderr.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        args, extras = parser.parse_known_args(argv)
        # argparse fills an optional positional (vary's PROMPT) only from the arguments before the first flag, so
        # `harmon vary IMAGE --strength 0.5 "prompt"` would leave "prompt" over: take it as the PROMPT.
        if len(extras) == 1 and not extras[0].startswith("-") and getattr(args, "prompt", "") is None:
            args.prompt, extras = extras[0], []
        if extras:
            raise _UsageError(f"unrecognized arguments: {' '.join(extras)}", f"harmon {args.command}")
        prog = " ".join(filter(None, ("harmon", args.command, getattr(args, "benchmark", None))))
        args.run(args)
    except SystemExit as stop:  # --help
        return stop.code or 0
    except (CommandError, ValueError, OSError) as error:
        prog = getattr(error, "prog", prog)
        # Messages of the model, the converter and the Hub client can span lines; the command prints one.
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
