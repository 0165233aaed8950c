"""`harmon eval geneval`: GenEval's prompts drawn into the folder layout its scorer reads.

    harmon eval geneval --metadata geneval/prompts/evaluation_metadata.jsonl --outdir geneval_images -n 4 --size 512
    torchrun --nproc-per-node 8 -m harmon_pipelines.cli eval geneval ...      # the same files, eight processes
    python geneval/evaluation/evaluate_images.py geneval_images --outfile results.jsonl --model-path MODELS

The drawing is `harmon generate --prompts`' batch machinery (`harmon_pipelines.batch_jobs`): resumable, sharded over
processes, every file written atomically, each image's settings and seed in a JSON sidecar beside it (GenEval's
scorer skips the sidecars). Prompt i (0-based line) goes to `OUTDIR/<i:05d>/`, with its metadata line in
`metadata.jsonl` and image k, drawn with seed + k (the line's own "seed" if it has one, else --seed), in
`samples/<k:04d>.png`. See `geneval_layout` for the layout and docs/evaluation.md for the scorer.
"""

import json
from pathlib import Path

from modeling_harmon.atomic_files import atomic_path


def add_geneval_arguments(parser, add_setting_arguments, add_model_arguments) -> None:
    """The arguments of `harmon eval geneval` on `parser`, and its `run`."""
    from .benchmark_drawing import add_drawing_arguments

    parser.add_argument(
        "--metadata",
        type=Path,
        required=True,
        metavar="FILE.jsonl",
        help="GenEval's prompts/evaluation_metadata.jsonl, or a file in its format (one object a line: tag, include, "
        "prompt; an optional integer 'seed' overrides --seed for that line)",
    )
    parser.add_argument("--outdir", type=Path, required=True, metavar="DIR", help="the folder GenEval's scorer reads")
    add_drawing_arguments(
        parser,
        add_setting_arguments,
        add_model_arguments,
        num_images=4,
        num_images_help="images per prompt (default 4)",
        overwrite_help="redraw images (and rewrite prompt metadata) recorded with other inputs; without it they are "
        "refused",
    )
    parser.set_defaults(run=run_geneval)


def _jobs(args, entries: list[dict]) -> list:
    """One batch job a GenEval prompt (line = its 1-based position), with its seed and the command's settings."""
    from ..batch_jobs import Job
    from ..cli import MAX_SEED, CommandError, _settings_options

    options = _settings_options(args)
    jobs = []
    for index, entry in enumerate(entries):
        seed = entry.get("seed", args.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - args.num_images + 1:
            raise CommandError(
                f'{args.metadata} line {index + 1}: "seed" must be an integer in [0, 2**64 - n], got {seed!r}'
            )
        jobs.append(Job(index + 1, entry["prompt"], seed, dict(options), source=str(args.metadata)))
    return jobs


def _check_folder(args, entries: list[dict], num_images: int) -> list[int]:
    """The prompts whose folder holds another metadata line (refused unless --overwrite: returned for rewriting);
    refuses sample images GenEval would score that this run would not draw (another -n, another metadata file)."""
    from ..cli import CommandError
    from .geneval_layout import iter_geneval_samples, prompt_folder, sample_stem

    outdir = args.outdir
    if not outdir.is_dir():
        return []
    changed = []
    for index, entry in enumerate(entries):
        path = prompt_folder(outdir, index) / "metadata.jsonl"
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                stored = None
            if stored != entry:
                changed.append(index)
    if changed and not args.overwrite:
        first = prompt_folder(outdir, changed[0]) / "metadata.jsonl"
        raise CommandError(
            f"--outdir {str(outdir)!r}: {len(changed)} prompt folder(s) hold another metadata line than --metadata "
            f"(first: {first}); pass --overwrite to redraw them, or use another --outdir"
        )
    expected = {outdir / f"{sample_stem(index, k)}.png" for index in range(len(entries)) for k in range(num_images)}
    stray = [path for _, path in iter_geneval_samples(outdir) if path not in expected]
    if stray:
        raise CommandError(
            f"--outdir {str(outdir)!r} holds {len(stray)} image(s) this run would not draw and GenEval's scorer would "
            f"count (first: {stray[0]}; another -n or another metadata file?); move them away or use another --outdir"
        )
    return changed


def run_geneval(args) -> None:
    from ..batch_jobs import Layout
    from ..cli import CommandError, check_device, check_size, regular_file
    from .benchmark_drawing import check_image_count, draw_benchmark
    from .geneval_layout import prompt_folder, read_geneval_metadata, sample_stem

    check_device(args.device)
    regular_file(args.metadata, f"--metadata {str(args.metadata)!r}")
    try:
        entries = read_geneval_metadata(args.metadata)
    except ValueError as error:
        raise CommandError(str(error)) from None
    n = args.num_images
    check_image_count(f"--metadata {str(args.metadata)!r}", len(entries), n, args.max_images)
    check_size(args.size, args.max_side, "--size")
    layout = Layout(args.outdir, stem=lambda job, k: sample_stem(job.line - 1, k))
    layout.check()
    jobs = _jobs(args, entries)
    changed = _check_folder(args, entries, n)

    def write_metadata(resolved: list) -> None:
        # Every process writes every missing metadata file: the same bytes, each atomically, so no process waits for
        # another and a folder never holds images without its metadata for long.
        for index, entry in enumerate(entries):
            path = prompt_folder(args.outdir, index) / "metadata.jsonl"
            if index in changed or not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as temporary:
                    temporary.write_text(json.dumps(entry, ensure_ascii=False) + "\n", encoding="utf-8")

    draw_benchmark(args, jobs, layout, before_drawing=write_metadata)
