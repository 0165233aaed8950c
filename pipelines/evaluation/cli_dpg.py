"""`harmon eval dpg`: DPG-Bench's prompts drawn into the grids its scorer reads.

    harmon eval dpg --prompts ELLA/dpg_bench/prompts --outdir runs/dpg -n 4 --size 512
    torchrun --nproc-per-node 8 -m harmon_pipelines.cli eval dpg ...      # the same files, eight processes
    accelerate launch dpg_bench/compute_dpg_bench.py --image-root-path runs/dpg/grids --resolution 512 --pic-num 4 ...

--prompts is DPG-Bench's `dpg_bench/prompts/` or a folder like it: one `<item_id>.txt` file a prompt (UTF-8,
stripped); files with other suffixes and sub-folders are ignored. The item id is the file's name without `.txt`:
letters, digits, "_" and "-" only, since DPG-Bench's scorer reads a grid's id up to its first dot.

Image k of every prompt (k < -n) is drawn with seed + k, with `harmon generate --prompts`' batch machinery
(`harmon_pipelines.batch_jobs`): resumable, sharded over processes, each image with a JSON sidecar, in
`OUTDIR/tiles/<item_id>/<k>.png`. Each process then composes the grids of its prompts, `OUTDIR/grids/<item_id>.png`:
tile k at (0,0), (S,0), (0,S), (S,S) for k = 0..3, S the (square) --size; a grid is rewritten only when the tiles it
records changed. Score with --image-root-path OUTDIR/grids --resolution S --pic-num N, N the -n drawn (1 to 4;
DPG-Bench's protocol is 4). `grids/` must hold nothing else: the command refuses to run while it does. See
`dpg_layout` for the layout and docs/evaluation.md for the scorer.
"""

import sys
from pathlib import Path


def add_dpg_arguments(parser, add_setting_arguments, add_model_arguments) -> None:
    """The arguments of `harmon eval dpg` on `parser`, and its `run`."""
    from .benchmark_drawing import add_drawing_arguments

    parser.add_argument(
        "--prompts",
        type=Path,
        required=True,
        metavar="DIR",
        help="DPG-Bench's dpg_bench/prompts folder: one <item_id>.txt file a prompt (other files are ignored)",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder: grids/ (the scorer's --image-root-path) and tiles/ (the images and their sidecars)",
    )
    add_drawing_arguments(
        parser,
        add_setting_arguments,
        add_model_arguments,
        num_images=4,
        num_images_help="images per prompt, 1 to 4, composed into one grid; score with --pic-num N (default 4, "
        "DPG-Bench's)",
        overwrite_help="redraw images recorded with other inputs, and replace grids harmon did not compose; without "
        "it they are refused",
    )
    parser.set_defaults(run=run_dpg)


def _square(size, shown: str) -> None:
    from ..cli import CommandError

    if size is not None and size[0] != size[1]:
        raise CommandError(
            f"{shown} {size[0]}x{size[1]}: DPG-Bench's scorer crops square tiles of --resolution pixels; give a "
            "square size"
        )


def run_dpg(args) -> None:
    from ..batch_jobs import Job, Layout, plan_batches
    from ..cli import MAX_SEED, CommandError, _settings_options, check_device, check_size
    from .benchmark_drawing import check_image_count, draw_benchmark
    from .dpg_layout import MAX_TILES, check_grids_folder, grids_folder, read_dpg_prompts, tile_stem, update_grid

    check_device(args.device)
    n = args.num_images
    if n > MAX_TILES:
        raise CommandError(f"-n {n}: DPG-Bench's scorer crops at most {MAX_TILES} images from a grid; give 1 to 4")
    try:
        items = read_dpg_prompts(args.prompts)
    except ValueError as error:
        raise CommandError(str(error)) from None
    check_image_count(f"--prompts {str(args.prompts)!r}", len(items), n, args.max_images)
    if args.seed > MAX_SEED - n + 1:
        raise CommandError(f"--seed {args.seed}: with -n {n}, seed + k must stay within [0, 2**64 - 1]")
    check_size(args.size, args.max_side, "--size")
    _square(args.size, "--size")
    layout = Layout(
        args.outdir,
        stem=lambda job, k: tile_stem(job.fields["id"], k),
        sidecar_fields=lambda job, k: {"id": job.fields["id"]},
    )
    layout.check()
    try:
        check_grids_folder(args.outdir, [item_id for item_id, _, _ in items], args.overwrite)
    except ValueError as error:
        raise CommandError(str(error)) from None
    options = _settings_options(args)
    # A prompt is line 1 of its own file: the sidecars record that, which stays true when files are added.
    jobs = [
        Job(1, prompt, args.seed, dict(options), fields={"id": item_id}, source=str(path))
        for item_id, path, prompt in items
    ]

    def square_tiles(resolved: list) -> None:
        _square((resolved[0].settings["height"], resolved[0].settings["width"]), "--size (the model's default)")

    jobs, launch = draw_benchmark(args, jobs, layout, before_drawing=square_tiles)
    tile = jobs[0].settings["height"]
    rank, world_size = launch["RANK"], launch["WORLD_SIZE"]
    # Each process composes the grids of the prompts it drew (run_jobs' share): no two processes write one grid.
    written = kept = 0
    for batch in plan_batches(jobs, args.batch_size)[rank::world_size]:
        for job in batch:
            try:
                changed = update_grid(args.outdir, job.fields["id"], job.prompt, n, tile)
            except (OSError, ValueError) as error:
                raise CommandError(f"cannot compose the grid of {job.source}: {error}") from None
            written += changed
            kept += not changed
    print(
        f"rank {rank}/{world_size}: {written} grid(s) written, {kept} up to date in {grids_folder(args.outdir)}; "
        f"score with --image-root-path {grids_folder(args.outdir)} --resolution {tile} --pic-num {n}",
        file=sys.stderr,
    )
