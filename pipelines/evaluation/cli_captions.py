"""`harmon eval captions`: one image per caption of a caption file, in the flat folder FID and CLIPScore read.

    harmon eval captions --captions coco30k.jsonl --outdir runs/coco30k --size 512
    harmon eval captions --captions mjhq/meta_data.json --outdir runs/mjhq30k --size 512
    torchrun --nproc-per-node 8 -m harmon_pipelines.cli eval captions ...   # the same files, eight processes
    harmon eval fid --generated runs/coco30k --reference coco30k_ref_512 --weights ...
    harmon eval clipscore --images runs/coco30k --clip clip-vit-large-patch14

--captions is told apart by content (see `caption_files`):
  text          one caption a line; id = the 0-based line number, zero-padded to at least 5 digits (blank lines
                refused, but at the end)
  JSON Lines    {"id": str | int, "caption": str} a line ("prompt" for "caption" is accepted)
  MJHQ-30K      meta_data.json: one object, id -> {"category": ..., "prompt": ...}
  COCO          captions_*.json: {"annotations": [{"id", "image_id", "caption"}, ...]}: ONE image per image_id
                (the caption of its smallest annotation id), id = the image id in 12 digits, in image id order;
                FID compares against one picture per COCO image
Text, JSON Lines and MJHQ keep the file's order. --limit N takes the first N of that order. Captions are stripped;
an id given twice, an unsafe id or an empty caption is refused, naming the file and the line (key, annotation).

Caption i (0-based, in that order) is drawn with seed + i; with -n N, its image k with seed + i * N + k. The images
are `OUTDIR/<id>.png` (`<id>_<k>.png` with -n above 1), each with a JSON sidecar of the same stem holding "prompt"
(what `harmon eval clipscore` reads), "seed", the settings, "id", "index" (i) and "line" (the caption's line, or its
1-based position in a JSON file; MJHQ adds "category", COCO "image_id" and "annotation_id"). The drawing is `harmon generate --prompts`' batch
machinery (`harmon_pipelines.batch_jobs`): resumable and sharded over processes. Since FID counts every image in
OUTDIR, the command refuses to run while OUTDIR holds images this run would not draw (another file, --limit or -n).
"""

import sys
from pathlib import Path


# 30K-image benchmarks are the point; COCO train2014 has 82,783 images.
MAX_CAPTION_IMAGES = 100_000


def add_captions_arguments(parser, add_setting_arguments, add_model_arguments) -> None:
    """The arguments of `harmon eval captions` on `parser`, and its `run`."""
    from ..cli import _positive_int_argument
    from .benchmark_drawing import add_drawing_arguments

    parser.add_argument(
        "--captions",
        type=Path,
        required=True,
        metavar="FILE",
        help="captions: a text file (one a line), JSON Lines ({id, caption}), MJHQ-30K's meta_data.json or COCO's "
        "captions_*.json (one image per image_id); told apart by content",
    )
    parser.add_argument(
        "--outdir", type=Path, required=True, metavar="DIR", help="the folder of images FID and CLIPScore read"
    )

    def add_limit(parser) -> None:
        parser.add_argument(
            "--limit",
            type=_positive_int_argument,
            metavar="N",
            help="only the first N captions (file order; COCO: image id order)",
        )

    add_drawing_arguments(
        parser,
        add_setting_arguments,
        add_model_arguments,
        num_images=1,
        num_images_help="images per caption (default 1)",
        seed_help="caption i (0-based, in file order) uses seed + i; with -n N, image k uses seed + i*N + k "
        "(default 0)",
        batch_size_help="captions per model call (default 1)",
        after_batch_size=add_limit,
        overwrite_help="redraw images recorded with other inputs; without it they are refused",
        max_images=MAX_CAPTION_IMAGES,
        max_images_help=f"refuse to draw more images than this (default {MAX_CAPTION_IMAGES:,})",
    )
    parser.set_defaults(run=run_captions)


def _check_folder(outdir: Path, names: set[str]) -> None:
    """Refuse images in `outdir` (as FID lists them) that this run would not draw: FID would count them."""
    from ..cli import CommandError
    from .image_metrics import list_images

    if not outdir.is_dir():
        return
    stray = [path for path in list_images(outdir, "--outdir") if path.name not in names]
    if stray:
        raise CommandError(
            f"--outdir {str(outdir)!r} holds {len(stray)} image(s) this run would not draw and FID would count "
            f"(first: {stray[0].name}; another caption file, --limit or -n?); move them away or use another --outdir"
        )


def run_captions(args) -> None:
    from ..batch_jobs import Layout
    from ..cli import MAX_SEED, CommandError, _settings_options, check_device, check_size, regular_file
    from .benchmark_drawing import check_image_count, draw_benchmark
    from .caption_files import read_captions

    check_device(args.device)
    regular_file(args.captions, f"--captions {str(args.captions)!r}")
    try:
        kind, captions = read_captions(args.captions)
    except ValueError as error:
        raise CommandError(str(error)) from None
    captions = captions[: args.limit]
    n = args.num_images
    check_image_count(
        f"--captions {str(args.captions)!r}", len(captions), n, args.max_images, "a larger --max-images (or --limit)"
    )
    if args.seed > MAX_SEED - len(captions) * n + 1:
        raise CommandError(f"--seed {args.seed}: seed + i * n + k must stay within [0, 2**64 - 1] for every image")
    check_size(args.size, args.max_side, "--size")

    def stem(job, k: int) -> str:
        return job.fields["id"] if n == 1 else f"{job.fields['id']}_{k}"

    layout = Layout(args.outdir, stem=stem, sidecar_fields=lambda job, k: dict(job.fields))
    layout.check()
    jobs = _jobs(args, captions, _settings_options(args))
    _check_folder(args.outdir, {f"{stem(job, k)}.png" for job in jobs for k in range(n)})
    print(f"--captions {str(args.captions)!r}: {len(captions)} captions ({kind})", file=sys.stderr)
    draw_benchmark(args, jobs, layout)


def _jobs(args, captions, options: dict) -> list:
    """One batch job a caption: seed + i * n (its images k add k), and its id, position and source fields for the
    sidecar."""
    from ..batch_jobs import Job

    n = args.num_images
    return [
        Job(
            caption.line,
            caption.prompt,
            args.seed + index * n,
            dict(options),
            fields={"id": caption.id, "index": index, **caption.fields},
            source=str(args.captions),
        )
        for index, caption in enumerate(captions)
    ]
