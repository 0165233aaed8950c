"""`harmon eval fid` and `harmon eval clipscore`: the arguments and runners of [`image_metrics`], for the `harmon`
command to mount as subcommands (`add_*_arguments(subparser)`; each sets `run` to its runner).

    harmon eval fid --generated images/ --reference coco-30k/ --weights weights-inception-2015-12-05-6726825d.pth
    harmon eval clipscore --images images/ --clip clip-vit-large-patch14/ --json clipscore.json

Both print the score on stdout and, with `--json OUT.json`, write the result dict atomically. Mistakes raise
`harmon_pipelines.cli`'s `CommandError` (one line on stderr, exit status 2).
"""

import argparse
from pathlib import Path

from .image_metrics import (
    CLIP_DOWNLOAD,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    TORCH_FIDELITY_INSTALL,
    ImageMetricError,
)


FID_HELP = "FID between a folder of generated images and a reference folder (torchmetrics)"
FID_DESCRIPTION = (
    "Frechet Inception Distance between the images of --generated and --reference (files directly in each folder: "
    ".png .jpg .jpeg .webp .bmp .tif .tiff, read as 8-bit RGB), computed by torchmetrics with torch-fidelity's "
    f"TensorFlow-compatible Inception-v3. Offline: --weights is the local file {INCEPTION_WEIGHTS_FILE} "
    f"({INCEPTION_WEIGHTS_URL}); torch-fidelity is installed with `{TORCH_FIDELITY_INSTALL}`. Folders must hold "
    "equal numbers of images, all at one resolution, unless --allow-count-mismatch / --resize say otherwise."
)
CLIPSCORE_HELP = "CLIPScore of generated images against their prompts (torchmetrics)"
CLIPSCORE_DESCRIPTION = (
    "CLIPScore (torchmetrics: mean of 100 x cosine of CLIP's image and prompt embeddings, floored at 0) of the images "
    "of --images against their prompts: from each image's STEM.json sidecar (as `harmon generate --prompts ... "
    "--outdir` writes them), or from GenEval's layout (NNNNN/metadata.jsonl with NNNNN/samples/*.png). --clip is a "
    f"local CLIP folder, e.g. `{CLIP_DOWNLOAD}` run on a machine with internet."
)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return int(value)


def _size(value: str) -> tuple[int, int]:
    parts = value.lower().split("x")
    if len(parts) in (1, 2) and all(part.strip().isdigit() and int(part) >= 1 for part in parts):
        return int(parts[0]), int(parts[-1])
    raise argparse.ArgumentTypeError(f"must be HxW or N in pixels (e.g. 256x256 or 299), got {value!r}")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="B",
        help="images read and scored at a time; memory does not grow with the number of images (default 32)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device for the network (default: cuda when available, else cpu)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write the result (JSON), atomically")


def add_fid_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `harmon eval fid` on `parser`; sets `run` to [`run_fid`]."""
    parser.add_argument("--generated", type=Path, required=True, metavar="DIR", help="folder of generated images")
    parser.add_argument("--reference", type=Path, required=True, metavar="DIR", help="folder of reference images")
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="FILE.pth",
        help=f"the FID Inception-v3 weights, {INCEPTION_WEIGHTS_FILE} (download: {INCEPTION_WEIGHTS_URL})",
    )
    parser.add_argument(
        "--resize",
        type=_size,
        metavar="HxW",
        help="resize every image to HxW (PIL bicubic) first; without it, all images must share one resolution",
    )
    parser.add_argument(
        "--allow-count-mismatch",
        action="store_true",
        help="score folders holding different numbers of images (refused by default: FID depends on the number)",
    )
    parser.add_argument(
        "--antialias",
        action="store_true",
        help="resize to the Inception's 299x299 with antialiased bilinear (torchmetrics' default) instead of "
        "TensorFlow 1.x's bilinear (the original FID's, so that values compare with published ones)",
    )
    _add_common(parser)
    parser.set_defaults(run=run_fid)


def add_clipscore_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `harmon eval clipscore` on `parser`; sets `run` to [`run_clipscore`]."""
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of images with STEM.json sidecars holding their prompt, or GenEval's layout",
    )
    parser.add_argument("--clip", type=Path, required=True, metavar="DIR", help="local CLIP folder (transformers)")
    _add_common(parser)
    parser.set_defaults(run=run_clipscore)


def _check_json(args) -> None:
    """Refuse a bad `--json` path before scoring, not after."""
    from ..cli import CommandError, check_writable_folder

    if args.json is None:
        return
    if args.json.is_dir():
        raise CommandError(f"--json {str(args.json)!r} is a folder; give a file name")
    check_writable_folder(args.json.parent, f"--json {str(args.json)!r}")


def _finish(args, result: dict, line: str) -> None:
    from modeling_harmon.atomic_files import write_json

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, args.json)
    print(line)


def run_fid(args) -> None:
    """`harmon eval fid`: prints `FID <value> (n generated, n reference)`."""
    from ..cli import CommandError, check_device
    from .image_metrics import fid_folders

    check_device(args.device)
    _check_json(args)
    try:
        result = fid_folders(
            args.generated,
            args.reference,
            weights=args.weights,
            batch_size=args.batch_size,
            device=args.device,
            resize=args.resize,
            allow_count_mismatch=args.allow_count_mismatch,
            antialias=args.antialias,
            progress=True,
        )
    except ImageMetricError as error:
        raise CommandError(str(error)) from None
    _finish(args, result, f"FID {result['value']:.4f} ({result['n']} generated, {result['n_reference']} reference)")


def run_clipscore(args) -> None:
    """`harmon eval clipscore`: prints `CLIPScore <value> (n images)`."""
    from ..cli import CommandError, check_device
    from .image_metrics import clip_score_folder

    check_device(args.device)
    _check_json(args)
    try:
        result = clip_score_folder(
            args.images, args.clip, batch_size=args.batch_size, device=args.device, progress=True
        )
    except ImageMetricError as error:
        raise CommandError(str(error)) from None
    _finish(args, result, f"CLIPScore {result['value']:.4f} ({result['n']} images)")
