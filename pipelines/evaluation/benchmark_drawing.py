"""What `harmon eval geneval`, `dpg` and `captions` share: the drawing flags, the image-count check, and the
drawing itself (`harmon generate --prompts`' batch machinery, `harmon_pipelines.batch_jobs`, under torchrun's
RANK and WORLD_SIZE). Each command adds its own input and output flags, layout and checks around them."""


def add_drawing_arguments(
    parser,
    add_setting_arguments,
    add_model_arguments,
    *,
    num_images: int,
    num_images_help: str,
    overwrite_help: str,
    seed_help: str = "image k of a prompt uses seed + k (default 0)",
    batch_size_help: str = "prompts per model call (default 1)",
    max_images: int | None = None,
    max_images_help: str | None = None,
    after_batch_size=None,
) -> None:
    """-n/--num-images (default `num_images`), --seed, --batch-size, `after_batch_size(parser)`'s flags if given,
    the setting flags of `harmon generate`, --overwrite, --max-side, --max-images (default `max_images`, else
    `harmon generate`'s) and the model flags, on `parser`, in that order."""
    from ..cli import GENERATE_FIELDS, MAX_IMAGES, MAX_SIDE, _positive_int_argument, _seed_argument

    parser.add_argument(
        "-n", "--num-images", type=_positive_int_argument, default=num_images, metavar="N", help=num_images_help
    )
    parser.add_argument("--seed", type=_seed_argument, default=0, help=seed_help)
    parser.add_argument("--batch-size", type=_positive_int_argument, default=1, metavar="B", help=batch_size_help)
    if after_batch_size is not None:
        after_batch_size(parser)
    add_setting_arguments(parser, GENERATE_FIELDS)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--max-side", type=_positive_int_argument, default=MAX_SIDE, metavar="PX")
    parser.add_argument(
        "--max-images",
        type=_positive_int_argument,
        default=MAX_IMAGES if max_images is None else max_images,
        metavar="N",
        help=max_images_help,
    )
    add_model_arguments(parser)


def check_image_count(
    shown: str, prompts: int, n: int, max_images: int, remedy: str = "a larger --max-images"
) -> None:
    """Refuse drawing `n` images for each of `prompts` prompts (read from `shown`, the flag and its file) when that
    is more than --max-images; `remedy` is what the message says to pass instead."""
    from ..cli import CommandError

    if prompts * n > max_images:
        raise CommandError(
            f"{shown} with -n {n} asks for {prompts * n} images; more than --max-images {max_images} are refused; "
            f"pass {remedy} to allow them"
        )


def draw_benchmark(args, jobs: list, layout, before_drawing=None) -> tuple[list, dict]:
    """Load the model, resolve `jobs`' settings against it, call `before_drawing(jobs)` (the resolved jobs) if given,
    and draw this process's share of the jobs' -n images into `layout`. Returns the resolved jobs and `_launch()`'s
    RANK, WORLD_SIZE, ...; read before the model loads, so a bad torchrun environment fails fast."""
    from ..batch_jobs import resolve_jobs, run_jobs
    from ..cli import _launch, _load

    launch = _launch()
    model, tokenizer = _load(args)
    jobs = resolve_jobs(jobs, model, sampling=args.sampling, max_side=args.max_side)
    if before_drawing is not None:
        before_drawing(jobs)
    run_jobs(
        jobs,
        layout,
        model,
        tokenizer,
        num_images=args.num_images,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        rank=launch["RANK"],
        world_size=launch["WORLD_SIZE"],
    )
    return jobs, launch
