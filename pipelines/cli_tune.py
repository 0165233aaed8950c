"""`harmon tune`: choose, by measurement on this machine, the CPU matrix-product kernel of each generation stage.

    harmon tune                                  # the embedded model at its own size and sampling settings
    harmon tune --model ./converted --size 256 --steps 64 --dtype bfloat16
    harmon tune --sampling fast                  # at the settings of one of the model's sampling presets

Runs `model.tune_for_host()`: one untimed and one timed generation with every stage's linears on MKL (the
reference's product), the same with every stage on packed oneDNN, and where a C compiler and AVX-512 allow (for
bfloat16 models, AVX512-BF16 too), with every stage on the hand-written few-row product (`modeling_harmon_smallrows`, built once into
the cache folder); it keeps the fastest per stage (LLM, MAR encoder, MAR decoder, diffusion head). The choice is
written to the user's cache (`$HARMON_KERNEL_CACHE`, else `~/.cache/harmon/linear_kernels.json`), keyed by
processor, torch version, threads, dtype, the model's layer shapes and the image size, and every later generation
of that model at that size on this machine uses it; nothing is written into the model folder. `--dry-run` measures without writing. Use the thread count you will generate with
(`OMP_NUM_THREADS`): the faster kernel can differ between one thread and many.
"""

import argparse
import json

from modeling_harmon.modeling_harmon_kernels import KERNELS, STAGES
from modeling_harmon.modeling_harmon_settings import HarmonSettingError

from .cli import CommandError, _load, check_device


KERNEL_NAMES = {"mkl": "MKL", "onednn": "oneDNN", "smallrows": "few-row"}
TUNE_FIELDS = ("height", "width", "num_iter", "num_sampling_steps", "guidance_scale")


def add_tune_command(commands, add_setting_arguments, add_model_arguments) -> None:
    """The `tune` subcommand, on `commands` (the `harmon` parser's subparsers)."""
    parser = commands.add_parser(
        "tune",
        help="choose the faster CPU kernel per generation stage on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="measure and print, write no cache entry")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    add_setting_arguments(parser, TUNE_FIELDS)
    add_model_arguments(parser)
    parser.set_defaults(run=run_tune)


def run_tune(args) -> None:
    check_device(args.device)
    if args.device not in (None, "cpu"):
        raise CommandError(f"--device {args.device}: harmon tune measures CPU kernels; use --device cpu")
    size = args.size or (None, None)
    model, _ = _load(args)
    if model.device.type != "cpu":
        raise CommandError("harmon tune measures CPU kernels; the model loaded on another device (pass --device cpu)")
    try:
        result = model.tune_for_host(
            height=size[0],
            width=size[1],
            num_iter=args.steps,
            num_sampling_steps=args.head_steps,
            guidance_scale=args.cfg,
            write=not args.dry_run,
            sampling=args.sampling,
        )
    except HarmonSettingError as error:
        given = {
            "num_iter": ("--steps", args.steps),
            "num_sampling_steps": ("--head-steps", args.head_steps),
            "guidance_scale": ("--cfg", args.cfg),
            "sampling": ("--sampling", args.sampling),
            "height": ("--size", "x".join(map(str, args.size)) if args.size else None),
            "width": ("--size", "x".join(map(str, args.size)) if args.size else None),
        }
        flag, value = given.get(error.field, (None, None))
        raise CommandError(f"{flag} {value}: {error}" if value is not None else str(error)) from None
    if args.json:
        print(json.dumps(result, indent=1))
        return
    seconds = result["seconds"]
    print(f"{result['processor']}; {result['key'].split(' | ', 1)[1]}")
    measured = [kernel for kernel in KERNELS if kernel in seconds]  # the few-row kernel only where it runs
    print("".join([f"{'stage':<16}", *(f"{KERNEL_NAMES[kernel] + ' (s)':>16}" for kernel in measured), "  chosen"]))
    for stage in STAGES:
        times = "".join(f"{seconds[kernel][stage]:>16.3f}" for kernel in measured)
        print(f"{stage:<16}{times}  {result['kernels'][stage]}")
    totals = "".join(f"{sum(seconds[kernel].values()):>16.3f}" for kernel in measured)
    chosen = sum(seconds[result["kernels"][stage]][stage] for stage in STAGES)
    print(f"{'these stages':<16}{totals}  {chosen:.3f} with the choice")
    print(f"wrote {result['cache']}" if "cache" in result else "dry run: nothing written")
