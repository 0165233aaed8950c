"""Text-to-image speed of `HarmonForConditionalGeneration.generate_images`, per stage, against the hardware's floor.

Why: to know where generation time goes (LLM, MAR encoder, MAR decoder, diffusion head, VAE), how far each stage is
from the least time this machine allows (its matmul rate and memory bandwidth, measured in the same run, against
the stage's analytic FLOPs and weight bytes), and what each exact shortcut of `HarmonSamplingSpeedups` buys against
the reference's work (every shortcut off).

How: the model is a preset with seeded random weights (speed depends on shapes only) and synthetic prompt token ids.
Stage times come from timers wrapped around the model's stage callables for the duration of a run. Every measured
configuration (optimised, baseline, each ablation, compiled head) runs in its own child process of this script, so
peak memory and timings belong to that configuration alone. Each run is preceded by an untimed warm-up
(one iteration, one head step, no VAE decode).

The inpaint cell (`--inpaint`) is the optimised text-to-image run of the same size and settings started from a fixed
synthetic init image with the right half of its token columns masked, at the model's default iteration scaling
(`num_iter` is not passed: the full-image count, `--num-iter`, is scaled by the share of tokens drawn). Its time is
the whole call, VAE encode of the init image included; it is reported against the text-to-image run's time and
against the share drawn, to check that inpainting costs about that share (plus the encode).

The edit cell (`--edit`, `benchmarks/edit_cell.py`) is the optimised run drawing with a context image in the prompt
(the inpaint cell's synthetic picture) and a text instruction, at `--image-cfg` image guidance: three row groups per
step where text-to-image runs two. It is reported against the text-to-image run, overall and per stage, with the
linear kernels it used.

    OMP_NUM_THREADS=1 python benchmarks/bench_generate.py --preset 0.5b --size 256 --num-iter 64 --batch 1 \
        --dtype bf16 --threads 1 --json runs/bench/generate_0.5b.json [--ablate] [--compile] [--no-baseline] \
        [--inpaint] [--edit [--image-cfg 1.5]]

Smoke run: `--preset tiny --size 32 --num-iter 4 --head-steps 2`, or a big preset with `--num-iter 1 --head-steps 2`.
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


if __package__ in (None, ""):  # run as `python benchmarks/bench_generate.py`: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.analytic import STAGES, GenerationShape, floors, generation_costs  # noqa: E402
from benchmarks.common import (  # noqa: E402
    DTYPES,
    PRESETS,
    SEED,
    build_model,
    device_problem,
    environment,
    median,
    peak_memory,
    preset_config,
    size_problem,
    stage_meter,
    stages_with_other,
    token_stride,
    wall_clock,
)
from benchmarks.edit_cell import edit_comparison, edit_inputs, format_edit  # noqa: E402
from modeling_harmon import HarmonSamplingSpeedups  # noqa: E402
from modeling_harmon.atomic_files import write_json  # noqa: E402
from modeling_harmon.modeling_harmon_canvas import redraw_tokens  # noqa: E402
from modeling_harmon.modeling_harmon_kernels import STAGES as STAGES_OF_KERNELS  # noqa: E402
from modeling_harmon.modeling_harmon_kernels import stage_targets as generation_stage_targets  # noqa: E402
from modeling_harmon.modeling_harmon_onednn import onednn_linears  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT_LENGTH = 20  # synthetic conditional prompt, in tokens
UNCONDITIONAL_PROMPT_LENGTH = 12  # about the templated "Generate an image." of the Qwen tokenizer
MATMUL_SIZE = 2048
COPY_BYTES = 512 * 1024**2
CEILING_REPEATS = 5
SPEEDUP_FIELDS = [field.name for field in dataclasses.fields(HarmonSamplingSpeedups)]


# ------------------------------------------------------------------------------------------------------ arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, required=True)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 16)")
    parser.add_argument("--num-iter", type=int, default=64, help="MAR iterations")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP_NUM_THREADS)")
    parser.add_argument("--head-steps", type=int, default=None, help="diffusion steps per iteration (default: config)")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance scale (1 turns CFG off)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per configuration; the median one is kept")
    parser.add_argument("--json", type=Path, default=None, help="write the report here (atomically)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run with every shortcut off")
    parser.add_argument("--ablate", action="store_true", help="also one run per shortcut turned off alone")
    parser.add_argument("--compile", action="store_true", help="also a run with torch.compile'd diffusion head")
    parser.add_argument(
        "--inpaint",
        action="store_true",
        help="also the inpaint cell: a fixed init image with the right half of its tokens redrawn, default "
        "iteration scaling, timed with its VAE encode, reported against the text-to-image run",
    )
    parser.add_argument(
        "--edit",
        action="store_true",
        help="also the edit cell: an instruction with a context image in view, both guidance scales on (three row "
        "groups per step), reported against the text-to-image run",
    )
    parser.add_argument(
        "--image-cfg", type=float, default=1.5, help="image guidance of the edit cell (1 turns it off: two groups)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every configuration in this process (peak memory is then the process's peak over all "
        "of them); for tests and profilers",
    )
    parser.add_argument(
        "--kernels",
        choices=("auto", "mkl", "onednn", "smallrows"),
        default="auto",
        help="CPU linear kernels of the optimised runs: the model's own choice (auto: this host's `harmon tune` "
        "cache for the preset's shape and size, else MKL everywhere), or one kernel for every stage",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="first run the model's tune_for_host at this cell's size, iterations and guidance (head steps capped "
        "at 10: the per-call shapes are the same) and write its choice to the cache, which auto then uses",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one configuration, JSON out
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject settings the model would reject later (or silently misuse), with the reason."""
    config = preset_config(args.preset)
    for problem in (size_problem(args.size, config), device_problem(args.device)):
        if problem is not None:
            parser.error(problem)
    cols = args.size // token_stride(config)
    seq_len = cols**2
    if args.inpaint and cols % 2:
        parser.error(
            f"--inpaint redraws the right half of the token columns, so it needs an even number of them; "
            f"--size {args.size} gives {cols}."
        )
    if not 1 <= args.num_iter <= seq_len:
        parser.error(
            f"--num-iter must be in [1, {seq_len}] (image tokens at --size {args.size}), got {args.num_iter}."
        )
    if args.head_steps is None:
        args.head_steps = config.num_sampling_steps
    if not 1 <= args.head_steps <= config.num_train_timesteps:
        parser.error(f"--head-steps must be in [1, {config.num_train_timesteps}], got {args.head_steps}.")
    for name in ("batch", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if not (math.isfinite(args.cfg) and args.cfg >= 1.0):
        parser.error(f"--cfg must be a finite number >= 1 (1 turns guidance off), got {args.cfg}.")
    if not (math.isfinite(args.image_cfg) and args.image_cfg >= 1.0):
        parser.error(f"--image-cfg must be a finite number >= 1 (1 turns image guidance off), got {args.image_cfg}.")


# ------------------------------------------------------------------------------------------ one configuration
def synthetic_prompts(config, batch: int, device: str) -> dict[str, torch.Tensor]:
    """Fixed random token ids: one conditional prompt (the same for every image) and the unconditional one."""
    generator = torch.Generator().manual_seed(SEED)
    vocab = config.text_config.vocab_size
    cond = torch.randint(0, vocab, (1, PROMPT_LENGTH), generator=generator).repeat(batch, 1)
    uncond = torch.randint(0, vocab, (1, UNCONDITIONAL_PROMPT_LENGTH), generator=generator).repeat(batch, 1)
    return {
        "input_ids": cond.to(device),
        "attention_mask": torch.ones_like(cond, device=device),
        "negative_input_ids": uncond.to(device),
        "negative_attention_mask": torch.ones_like(uncond, device=device),
    }


def stage_targets(model) -> dict[str, list[tuple[object, str]]]:
    """The callables each stage's time is read from: the package's (`modeling_harmon_kernels.stage_targets`: the LLM
    through `bridge` and `run_language_model`, the MAR encoder, decoder and head), plus the VAE decode."""
    return {**generation_stage_targets(model.model), "vae": [(model.model, "decode_latents")]}


def generate(model, prompts: dict, args: argparse.Namespace, num_iter: int, head_steps: int, decode: bool = True):
    """One `generate_images` call at the run's size and guidance, with one seeded generator per image; `prompts` are
    its prompt keywords (the synthetic prompt ids, or the edit cell's instruction and context image)."""
    generators = [torch.Generator().manual_seed(SEED + index) for index in range(args.batch)]
    return model.generate_images(
        **prompts,
        height=args.size,
        width=args.size,
        num_iter=num_iter,
        guidance_scale=args.cfg,
        num_sampling_steps=head_steps,
        generator=generators,
        decode=decode,
    )


def inpaint_canvas(size: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(init image (3, size, size), mask (1, size, size)), both in [0, 1]: a fixed smooth synthetic picture (no file,
    no checkpoint needed) and a mask white over the right half of the token columns, on a token boundary so that
    exactly half the tokens are redrawn."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([x, y, 0.5 + 0.5 * torch.sin(8 * math.pi * (x + y))])
    mask = torch.zeros(1, size, size)
    mask[..., size // stride // 2 * stride :] = 1.0
    return image, mask


def canvas_facts(canvas: tuple[torch.Tensor, torch.Tensor], size: int, stride: int) -> dict:
    """Tokens redrawn by the canvas's mask, by the model's own rule (`redraw_tokens`), of all the image's tokens."""
    redraw = redraw_tokens(canvas[1], size, size, stride)
    drawn, tokens = int(redraw.sum()), redraw[0].numel()
    return {"tokens": tokens, "tokens_drawn": drawn, "share_drawn": drawn / tokens}


def full_image_iterations(model, num_iter: int) -> None:
    """Make `num_iter` the model's stored default, so that an inpaint call without `num_iter` scales this run's
    full-image count (the text-to-image run's) by the share drawn, as it would scale a checkpoint's default."""
    stored = dict(getattr(model.generation_config, "image_generation", None) or {})
    model.generation_config.image_generation = {**stored, "num_iter": num_iter}


def inpaint(
    model,
    prompts: dict,
    args: argparse.Namespace,
    canvas,
    head_steps: int,
    num_iter: int | None = None,
    decode: bool = True,
    callback=None,
):
    """One inpainting `generate_images` call at the run's size and guidance; `num_iter=None` leaves the iterations
    to the model's scaling by the share drawn."""
    generators = [torch.Generator().manual_seed(SEED + index) for index in range(args.batch)]
    iterations = {} if num_iter is None else {"num_iter": num_iter}
    return model.generate_images(
        **prompts,
        init_image=canvas[0],
        mask_image=canvas[1],
        height=args.size,
        width=args.size,
        guidance_scale=args.cfg,
        num_sampling_steps=head_steps,
        generator=generators,
        decode=decode,
        callback=callback,
        **iterations,
    )


def timed_generation(model, prompts: dict, args: argparse.Namespace, canvas=None, edit_kwargs=None) -> dict:
    """Wall time of one full `generate_images` call, and of each stage in it. With an inpaint `canvas`, the call
    starts from it (its VAE encode timed as `vae_encode`) and `iterations` counts the MAR iterations it ran; with
    `edit_kwargs` it is an edit (the context image's VAE encode timed as `vae_encode` too)."""
    clock = wall_clock(args.device)
    targets = stage_targets(model)
    steps: list[int] = []
    if canvas is not None or edit_kwargs is not None:
        targets["vae_encode"] = [(model.model, "encode_images")]
    with stage_meter(targets, clock) as totals:
        start, cpu_start = clock(), time.process_time()
        if canvas is None:
            generate(model, edit_kwargs or prompts, args, args.num_iter, args.head_steps)
        else:
            inpaint(model, prompts, args, canvas, args.head_steps, callback=lambda step, *_: steps.append(step))
        total, cpu = clock() - start, time.process_time() - cpu_start
    result = {"total_s": total, "per_image_s": total / args.batch, "stages": stages_with_other(totals, total)}
    result["cpu_s"] = cpu  # this process's CPU time: unlike wall time, not stretched by other jobs taking the cores
    if canvas is not None:
        result["iterations"] = len(steps)
    return result


def compile_diffusion_head(model) -> None:
    """Replace the head's per-step function (what the sampler calls `head_steps` times per iteration) by its
    `torch.compile`d version, compiled for any number of rows. Compilation happens at the first calls."""
    head = model.model.diffusion_head
    head.forward_modulated = torch.compile(head.forward_modulated, dynamic=True)


def measure_configuration(args: argparse.Namespace, spec: dict) -> dict:
    """Build the model, apply `spec` (shortcuts, compile, inpaint), warm up, then time `--repeats` runs; the run
    with the median total is reported, with this process's peak memory and the median CPU time (`cpu_s`).

    The warm-up is one iteration with one head step and no VAE decode (for the inpaint cell, from its canvas, so
    that the VAE encoder is warm too); with a compiled head it is a full run instead (so that every shape the timed
    runs meet is compiled), and `compile_s` is how much longer it took than the reported run. A failed compile is
    reported, not raised.
    """
    torch.set_num_threads(args.threads)
    model = build_model(args.preset, args.dtype, args.device)
    model.sampling_speedups = HarmonSamplingSpeedups(**spec["speedups"])
    prompts = synthetic_prompts(model.config, args.batch, args.device)
    compiled = bool(spec.get("compile"))
    canvas = inpaint_canvas(args.size, token_stride(model.config)) if spec.get("inpaint") else None
    if canvas is not None:
        full_image_iterations(model, args.num_iter)
    edit_kwargs = (
        edit_inputs(model, inpaint_canvas(args.size, token_stride(model.config))[0], args.batch, args.image_cfg)
        if spec.get("edit")
        else None
    )
    kernels = model.linear_kernels(args.size, args.size) if model.sampling_speedups.onednn_linears else None
    try:
        # The first call of a fresh process, timed in full: what a one-image `harmon generate` pays.
        first = timed_generation(model, prompts, args, canvas, edit_kwargs)
        if compiled:
            compile_diffusion_head(model)
            first_s = timed_generation(model, prompts, args)["total_s"]
        runs = sorted(
            (timed_generation(model, prompts, args, canvas, edit_kwargs) for _ in range(args.repeats)),
            key=lambda r: r["total_s"],
        )
    except Exception as error:
        if not compiled:
            raise
        return {"error": f"{type(error).__name__}: {error}"}
    result = {**runs[len(runs) // 2], **peak_memory(args.device), "repeat_total_s": [r["total_s"] for r in runs]}
    result["first_call"] = {"total_s": first["total_s"], "stages": first["stages"]}
    result["linear_kernels"] = kernels  # None: every stage on MKL (the baseline's products)
    result["repeat_cpu_s"] = [r["cpu_s"] for r in runs]
    result["cpu_s"] = median(result["repeat_cpu_s"])
    if canvas is not None:
        result.update(canvas_facts(canvas, args.size, token_stride(model.config)))
    if compiled:
        result["compile_s"] = first_s - result["total_s"]
    return result


def child_argv(args: argparse.Namespace) -> list[str]:
    """The arguments a child needs to rebuild the same run."""
    return [
        "--preset",
        args.preset,
        "--size",
        str(args.size),
        "--num-iter",
        str(args.num_iter),
        "--batch",
        str(args.batch),
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--head-steps",
        str(args.head_steps),
        "--cfg",
        str(args.cfg),
        "--image-cfg",
        str(args.image_cfg),
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
    ]


def measure_in_child(args: argparse.Namespace, spec: dict) -> dict:
    """`measure_configuration` in a fresh process of this script, so its peak memory is its own."""
    command = [sys.executable, "-m", "benchmarks.bench_generate", *child_argv(args), "--child", json.dumps(spec)]
    environment_variables = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=environment_variables, stdout=subprocess.PIPE, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"configuration {spec} failed in its child process (exit code {completed.returncode}).")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, spec: dict) -> dict:
    """One configuration, in its own child process unless `--in-process`."""
    if args.in_process:
        return measure_configuration(args, spec)
    try:
        return measure_in_child(args, spec)
    except RuntimeError as error:
        if spec.get("compile"):  # e.g. the compiler crashed the process
            return {"error": str(error)}
        raise


# ------------------------------------------------------------------------------------------------------- ceiling
def matmul_gflops(dtype: torch.dtype, device: str) -> dict[str, float]:
    """Median rate of a MATMUL_SIZE³ matrix product in the run's dtype and thread count (after one warm-up), per
    kernel: `torch_mm` (MKL for float32 on CPUs) and, on CPUs that have it, `onednn_packed` (the pre-packed oneDNN
    product that `HarmonSamplingSpeedups.onednn_linears` uses; 2.4x MKL's float32 rate on the project's AMD CPU)."""
    generator = torch.Generator().manual_seed(SEED)
    a, b = (
        torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(device=device, dtype=dtype) for _ in range(2)
    )
    out = torch.mm(a, b)
    kernels = {"torch_mm": lambda: torch.mm(a, b, out=out)}
    # The same product through the model's own path: an nn.Linear holding b^T, switched by `onednn_linears`.
    linear = torch.nn.Linear(MATMUL_SIZE, MATMUL_SIZE, bias=False, device=device, dtype=dtype)
    linear.weight.data = b.t().contiguous()
    with torch.no_grad(), onednn_linears(linear, enabled=device == "cpu") as switched:
        if switched:
            kernels["onednn_packed"] = lambda: linear(a)
        return {name: _median_gflops(kernel, device) for name, kernel in kernels.items()}


def _median_gflops(kernel, device: str) -> float:
    """Median rate of `kernel` (one MATMUL_SIZE³ product) over CEILING_REPEATS calls after one warm-up."""
    kernel()
    clock, times = wall_clock(device), []
    for _ in range(CEILING_REPEATS):
        start = clock()
        kernel()
        times.append(clock() - start)
    return 2 * MATMUL_SIZE**3 / median(times) / 1e9


def copy_gbps(device: str) -> float:
    """Median bandwidth of copying COPY_BYTES into an already-touched buffer, counting bytes read plus written."""
    source = torch.ones(COPY_BYTES, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    clock, times = wall_clock(device), []
    for _ in range(CEILING_REPEATS):
        start = clock()
        target.copy_(source)
        times.append(clock() - start)
    return 2 * COPY_BYTES / median(times) / 1e9


def measure_ceiling(args: argparse.Namespace) -> dict:
    """The machine's matmul rate and copy bandwidth in the run's dtype and thread count: the floor's two limits.

    `matmul_gflops` is the fastest kernel's rate on one large product (`matmul_kernels` holds each kernel's). It is
    not a hard bound: a stage whose kernels beat it shows a time/floor below 1."""
    torch.set_num_threads(args.threads)
    kernels = matmul_gflops(DTYPES[args.dtype], args.device)
    return {"matmul_gflops": max(kernels.values()), "matmul_kernels": kernels, "copy_gbps": copy_gbps(args.device)}


# -------------------------------------------------------------------------------------------------------- report
def configurations(args: argparse.Namespace) -> dict[str, dict]:
    """name -> spec of every configuration this run measures."""
    kernels = None if args.kernels == "auto" else dict.fromkeys(STAGES_OF_KERNELS, args.kernels)
    everything = dataclasses.asdict(dataclasses.replace(HarmonSamplingSpeedups(), linear_kernels=kernels))
    specs = {"optimised": {"speedups": everything}}
    if not args.no_baseline:
        specs["baseline"] = {"speedups": dataclasses.asdict(HarmonSamplingSpeedups.none())}
    if args.ablate:
        for field in SPEEDUP_FIELDS:
            if field != "linear_kernels":  # a choice, not a shortcut: --kernels sets it
                specs[f"without_{field}"] = {"speedups": {**everything, field: False}}
    if args.compile:
        specs["compiled"] = {"speedups": everything, "compile": True}
    if args.inpaint:
        specs["inpaint"] = {"speedups": everything, "inpaint": True}
    if args.edit:
        specs["edit"] = {"speedups": everything, "edit": True}
    return specs


def with_analytic(measured: dict, spec: dict, shape: GenerationShape, config, ceiling: dict) -> dict:
    """A measured configuration plus its analytic FLOPs, weight bytes and floor time per stage."""
    costs = generation_costs(config, shape, HarmonSamplingSpeedups(**spec["speedups"]))
    analytic = floors(costs, ceiling["matmul_gflops"], ceiling["copy_gbps"])
    return {**measured, "analytic": analytic, "floor_s": sum(stage["floor_s"] for stage in analytic.values())}


def format_table(name: str, result: dict) -> str:
    """stage | seconds | share | GFLOP | achieved GFLOP/s | floor s | time/floor, then the total."""
    if "error" in result:
        return f"{name}: failed: {result['error']}"
    total = result["total_s"]
    heading = f"{name}: {total:.3f} s total, {result['per_image_s']:.3f} s/image"
    heading += f", peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB"
    if "compile_s" in result:
        heading += f", compile {result['compile_s']:.1f} s"
    columns = f"{'seconds':>10}{'share':>8}{'GFLOP':>10}{'GFLOP/s':>10}{'floor s':>10}{'time/floor':>12}"
    lines = [heading, f"  {'stage':<15}{columns}"]
    for stage in (*STAGES, "other"):
        seconds = result["stages"][stage]
        row = f"  {stage:<15}{seconds:>10.3f}{seconds / total:>8.1%}"
        if stage in result["analytic"]:
            cost = result["analytic"][stage]
            rate = cost["gflop"] / seconds if seconds > 0 else float("nan")
            ratio = seconds / cost["floor_s"] if cost["floor_s"] > 0 else float("nan")
            row += f"{cost['gflop']:>10.2f}{rate:>10.1f}{cost['floor_s']:>10.4f}{ratio:>12.1f}"
        lines.append(row)
    floor = result["floor_s"]
    lines.append(f"  {'total':<15}{total:>10.3f}{1:>8.1%}{'':>20}{floor:>10.4f}{total / floor:>12.1f}")
    return "\n".join(lines)


def inpaint_comparison(inpaint_result: dict, t2i: dict) -> dict:
    """The inpaint cell against the text-to-image run: `ratio` of their times (`cpu_ratio` of their CPU times, the
    one to read on a shared machine, where other jobs stretch wall times unevenly between the two processes), and
    `expected_ratio`, the share drawn plus the VAE encode's share of the text-to-image time (the stages that run per
    iteration or per drawn token shrink with the share; the VAE decode does not, so `expected_ratio_fixed_decode`
    keeps it whole)."""
    t2i_s, share = t2i["total_s"], inpaint_result["share_drawn"]
    encode = inpaint_result["stages"]["vae_encode"] / t2i_s
    decode = t2i["stages"]["vae"] / t2i_s
    return {
        **inpaint_result,
        "t2i_s": t2i_s,
        "ratio": inpaint_result["total_s"] / t2i_s,
        "t2i_cpu_s": t2i["cpu_s"],
        "cpu_ratio": inpaint_result["cpu_s"] / t2i["cpu_s"],
        "expected_ratio": share + encode,
        "expected_ratio_fixed_decode": share * (1 - decode) + decode + encode,
    }


def format_inpaint(args: argparse.Namespace, inpaint_result: dict) -> str:
    """One row each for the text-to-image run and the inpaint cell: seconds, ratio, share drawn, iterations, VAE
    encode and the expected ratio."""
    if "error" in inpaint_result:
        return f"inpaint: failed: {inpaint_result['error']}"
    heading = (
        f"inpaint (right half of the token columns redrawn, default iteration scaling; median of {args.repeats} "
        "run(s) each)"
    )
    columns = f"{'seconds':>10}{'ratio':>8}{'CPU s':>10}{'CPU ratio':>11}{'drawn':>8}{'iterations':>12}"
    columns += f"{'VAE enc s':>11}{'expected':>10}"
    t2i_row = (
        f"  {'t2i':<9}{inpaint_result['t2i_s']:>10.3f}{1:>8.3f}{inpaint_result['t2i_cpu_s']:>10.3f}{1:>11.3f}"
        f"{1:>8.3f}{args.num_iter:>12}{'-':>11}{'-':>10}"
    )
    row = (
        f"  {'inpaint':<9}{inpaint_result['total_s']:>10.3f}{inpaint_result['ratio']:>8.3f}"
        f"{inpaint_result['cpu_s']:>10.3f}{inpaint_result['cpu_ratio']:>11.3f}"
        f"{inpaint_result['share_drawn']:>8.3f}{inpaint_result['iterations']:>12}"
        f"{inpaint_result['stages']['vae_encode']:>11.3f}{inpaint_result['expected_ratio']:>10.3f}"
    )
    stages = ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in inpaint_result["stages"].items())
    return "\n".join(
        [
            heading,
            f"  {'cell':<9}{columns}",
            t2i_row,
            row,
            f"  inpaint stages (s): {stages}",
            f"  seconds: wall, the median run; CPU s: median CPU time of this process. expected = share drawn + "
            f"VAE encode / t2i; with the VAE decode kept whole: "
            f"{inpaint_result['expected_ratio_fixed_decode']:.3f}",
        ]
    )


def build_report(args: argparse.Namespace, ceiling: dict, results: dict[str, dict]) -> dict:
    """The JSON report: the optimised run at the top level, the others under baseline / ablations / compiled."""
    optimised = results["optimised"]
    baseline = results.get("baseline")
    ablations = {}
    for field in SPEEDUP_FIELDS:
        if f"without_{field}" in results:
            ablated = results[f"without_{field}"]
            ablations[field] = {**ablated, "slowdown": ablated["total_s"] / optimised["total_s"]}
    inpaint_result = results.get("inpaint")
    if inpaint_result is not None and "error" not in inpaint_result:
        inpaint_result = inpaint_comparison(inpaint_result, optimised)
    edit_result = results.get("edit")
    if edit_result is not None and "error" not in edit_result:
        edit_result = edit_comparison(edit_result, optimised, args.cfg, args.image_cfg)
    return {
        "preset": args.preset,
        "size": args.size,
        "num_iter": args.num_iter,
        "batch": args.batch,
        "dtype": args.dtype,
        "threads": args.threads,
        "head_steps": args.head_steps,
        "cfg": args.cfg,
        "device": args.device,
        "repeats": args.repeats,
        "isolated_processes": not args.in_process,
        **optimised,
        "ceiling": ceiling,
        "baseline": baseline,
        "speedup": baseline["total_s"] / optimised["total_s"] if baseline else None,
        "ablations": ablations,
        "compiled": results.get("compiled"),
        "inpaint": inpaint_result,
        "image_cfg": args.image_cfg if args.edit else None,
        "edit": edit_result,
        **environment(args.device),
    }


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure_configuration(args, json.loads(args.child))), flush=True)
        return None
    config = preset_config(args.preset)
    ceiling = measure_ceiling(args)
    guided = args.cfg != 1.0
    shape = GenerationShape(
        batch=args.batch,
        size=args.size,
        num_iter=args.num_iter,
        head_steps=args.head_steps,
        guidance_scale=args.cfg,
        prompt_length=max(PROMPT_LENGTH, UNCONDITIONAL_PROMPT_LENGTH) if guided else PROMPT_LENGTH,
        dtype_bytes=DTYPES[args.dtype].itemsize,
    )
    tuning = None
    if args.tune:
        torch.set_num_threads(args.threads)  # the cache key holds the thread count the children run with
        tuned = build_model(args.preset, args.dtype, args.device)
        started = time.perf_counter()
        tuning = tuned.tune_for_host(
            height=args.size,
            width=args.size,
            num_iter=args.num_iter,
            num_sampling_steps=min(10, args.head_steps),
            guidance_scale=args.cfg,
        )
        tuning["tune_s"] = time.perf_counter() - started
        del tuned
    results = {}
    for name, spec in configurations(args).items():
        measured = measure(args, spec)
        # The analytic model is of full-image drawing; the inpaint cell is read against the measured t2i run instead.
        plain = "error" in measured or spec.get("inpaint") or spec.get("edit")
        results[name] = measured if plain else with_analytic(measured, spec, shape, config, ceiling)
    report = build_report(args, ceiling, results)
    report["tuning"] = tuning
    print(
        f"{args.preset} {args.size}px, {args.num_iter} iterations x {args.head_steps} head steps, "
        f"batch {args.batch}, cfg {args.cfg}, {args.dtype}, {args.threads} thread(s) on {args.device} "
        f"({report['cpu']})"
    )
    kernels = ", ".join(f"{name} {rate:.1f}" for name, rate in ceiling.get("matmul_kernels", {}).items())
    print(f"ceiling: matmul {ceiling['matmul_gflops']:.1f} GFLOP/s ({kernels}), copy {ceiling['copy_gbps']:.1f} GB/s")
    for name in ("optimised", "baseline", "compiled"):
        if name in results:
            print(format_table(name, results[name]))
    if tuning is not None:
        print(f"tuned kernels ({tuning['tune_s']:.0f} s to measure): {tuning['kernels']}")
    for name in ("optimised", "baseline"):
        if "first_call" in results.get(name, {}):
            first, warm = results[name]["first_call"]["total_s"], results[name]["total_s"]
            print(f"{name}: first call {first:.3f} s, warm {warm:.3f} s (first/warm x{first / warm:.3f})")
    if results.get("optimised", {}).get("linear_kernels") is not None:
        print(f"optimised linear kernels: {results['optimised']['linear_kernels']}")
    if report["speedup"] is not None:
        print(f"speedup of the shortcuts over the baseline: x{report['speedup']:.2f}")
    for field, result in report["ablations"].items():
        stages = ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in result["stages"].items())
        print(f"without {field}: {result['total_s']:.3f} s (x{result['slowdown']:.2f} of optimised; {stages})")
    if report["inpaint"] is not None:
        print(format_inpaint(args, report["inpaint"]))
    if report["edit"] is not None:
        print(format_edit(report["edit"], args.image_cfg))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
