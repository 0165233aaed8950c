"""Where the diffusion head's time goes at few rows per call, against bounds measured on the same machine.

Why: at batch 1 and many MAR iterations the head runs about 8 rows per call (issue 27 found it 2x its floor). A head
call has two parts: the adaLN modulations of all its steps, computed at once (large products), and the per-step chain
(two products per block on those few rows, plus elementwise work). This script times each part, the chain's products
alone under each available kernel, and two bounds for them: reading their weights once (the bandwidth bound) and their
FLOPs at the rate of a 2048^3 product (the compute bound). If the products are far above both bounds, the kernel is
the limit, not the memory.

    OMP_NUM_THREADS=1 python benchmarks/head_profile.py --preset 0.5b-shaped-4l --dtype fp32 --rows 8 \\
        --json runs/bench/head_fp32.json
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path


if __package__ in (None, ""):  # run as `python benchmarks/head_profile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import DTYPES, PRESETS, SEED, build_model, environment  # noqa: E402
from modeling_harmon.atomic_files import write_json  # noqa: E402
from modeling_harmon.modeling_harmon_kernels import kernel_cache_path  # noqa: E402
from modeling_harmon.modeling_harmon_onednn import onednn_linear_available, onednn_linears  # noqa: E402
from modeling_harmon.modeling_harmon_smallrows import small_row_dtypes, small_row_linears  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="0.5b-shaped-4l")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--rows", type=int, default=8, help="rows per head call (tokens x guidance groups)")
    parser.add_argument("--steps", type=int, default=100, help="head steps per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the fastest is kept")
    parser.add_argument("--rate-size", type=int, default=2048, help="side of the product that gives the FLOP rate")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("rows", "steps", "repeats", "rate_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    return args


def fastest(function, repeats: int, inner: int = 1) -> float:
    """Seconds of one call of `function`: the fastest of `repeats` timings of `inner` calls each."""
    function()  # packs weights, builds primitives
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def chain_products(head) -> list[torch.nn.Linear]:
    """The products of the per-step chain that are width x width (two per block); the rest are small."""
    return [layer for block in head.res_blocks for layer in (block.mlp[0], block.mlp[2])]


def profile(args) -> dict:
    torch.manual_seed(SEED)
    model = build_model(args.preset, args.dtype, "cpu")
    head = model.model.diffusion_head
    dtype = head.input_proj.weight.dtype
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(args.rows, model.config.token_dim, generator=generator).to(dtype)
    condition = torch.randn(args.rows, model.config.decoder_hidden_size, generator=generator).to(dtype)
    timesteps = torch.arange(args.steps) * (model.config.num_train_timesteps // args.steps)
    products = chain_products(head)
    width = head.input_proj.out_features
    hidden = torch.randn(args.rows, width, generator=generator).to(dtype)
    # Each kernel: the contexts that switch the head's linears to it (as `modeling_harmon_kernels.stage_kernels`).
    kernels = {"mkl": ()}
    if onednn_linear_available():
        kernels["onednn"] = (onednn_linears,)
    folder = kernel_cache_path().parent
    if dtype in small_row_dtypes(folder):
        kernels["smallrows"] = (onednn_linears, lambda module: small_row_linears(module, folder))
    result = {"preset": args.preset, "dtype": args.dtype, "rows": args.rows, "steps": args.steps, "kernels": {}}
    with torch.no_grad():
        for name, contexts in kernels.items():
            with contextlib.ExitStack() as stack:
                for context in contexts:
                    stack.enter_context(context(head))
                modulations = head.modulations(timesteps, condition)
                step = [tensor[0] for tensor in modulations]
                result["kernels"][name] = {
                    "modulations_s": fastest(lambda: head.modulations(timesteps, condition), args.repeats),
                    "chain_step_s": fastest(lambda: head.forward_modulated(inputs, step), args.repeats, 20),
                    "products_s": fastest(lambda: [layer(hidden) for layer in products], args.repeats, 20),
                }
        weights = [layer.weight.detach() for layer in products]
        side = args.rate_size
        square = torch.nn.Linear(side, side, bias=False).to(dtype)
        operand = torch.randn(side, side, generator=generator).to(dtype)
        with onednn_linears(square, enabled="onednn" in kernels):
            rate = 2 * side**3 / fastest(lambda: square(operand), args.repeats)
        read_s = fastest(lambda: [weight.sum() for weight in weights], args.repeats, 5)
    flops = 2 * args.rows * sum(weight.numel() for weight in weights)
    result["bounds"] = {
        "weight_bytes": sum(weight.numel() * weight.element_size() for weight in weights),
        "read_weights_s": read_s,
        "product_gflops": rate / 1e9,
        "compute_s": flops / rate,
    }
    bound = max(read_s, flops / rate)
    for timing in result["kernels"].values():
        timing["products_over_bound"] = timing["products_s"] / bound
        timing["elementwise_s"] = timing["chain_step_s"] - timing["products_s"]
    return {**result, **environment("cpu")}


def format_report(result: dict) -> str:
    bounds = result["bounds"]
    lines = [
        f"{result['preset']} diffusion head, {result['dtype']}, {result['rows']} rows, {result['steps']} steps "
        f"({result['cpu']}, {torch.get_num_threads()} thread(s))",
        f"  bounds of the chain's products: read {bounds['weight_bytes'] / 1e6:.1f} MB in "
        f"{bounds['read_weights_s'] * 1e3:.3f} ms; {bounds['compute_s'] * 1e3:.3f} ms at "
        f"{bounds['product_gflops']:.1f} GFLOP/s",
        f"  {'kernel':<10}{'modulations s':>15}{'step ms':>10}{'products ms':>13}{'elementwise ms':>16}{'x bound':>9}",
    ]
    for name, timing in result["kernels"].items():
        lines.append(
            f"  {name:<10}{timing['modulations_s']:>15.4f}{timing['chain_step_s'] * 1e3:>10.3f}"
            f"{timing['products_s'] * 1e3:>13.3f}{timing['elementwise_s'] * 1e3:>16.3f}"
            f"{timing['products_over_bound']:>9.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = profile(args)
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
