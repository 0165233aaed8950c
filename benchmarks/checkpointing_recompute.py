"""Gradient checkpointing: how many times each kind of block runs in one training step, and what the step costs,
with checkpointing off and on.

Why: with checkpointing on, each block should run twice per step: once in the forward and once more when the
backward recomputes it. An extra checkpoint layered over a block that already checkpoints itself (transformers'
`GradientCheckpointingLayer`) makes it run three times. With transformers' default (non-reentrant) checkpoint,
torch's early stop of recomputation happens to hide the third run, so the reentrant mode and the mode without
early stop are measured too: they show a redundant layer that the default mode does not.

How: the tiny model `modeling_harmon.demo.build_random_model(seed=0)` with its zero-initialised parts woken (as
the other benchmarks do, so no residual branch is switched off), in training mode, takes one text-to-image
training step (`text_to_image_loss` then `backward`) on a fixed random batch. A forward pre-hook on the first
sub-module each block calls counts how often a block starts: the forward plus every recomputation. Pre-hooks,
because torch's non-reentrant checkpoint may end a recomputation early, before the block's last sub-module runs.
Modes: off; on with transformers' default (`use_reentrant=False`); on with `use_reentrant=True`; on with torch's
early stop of recomputation turned off (`torch.utils.checkpoint.set_checkpoint_early_stop(False)`). Each mode's
gradients are compared with those of the mode without checkpointing (the largest absolute difference over all
parameters). The diffusion loss alone (forward + backward on seeded inputs with as many rows as the step feeds the
head) is timed too, since the head's share of the tiny model's step is small. Step times are medians of
`--repeats` timed steps after one warm-up step; the modes take turns, so a drifting machine load is spread over
all of them.

    OMP_NUM_THREADS=1 python benchmarks/checkpointing_recompute.py --threads 1 --json runs/bench/checkpointing.json
"""

import argparse
import sys
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from pathlib import Path


if __package__ in (None, ""):  # run as `python benchmarks/checkpointing_recompute.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.checkpoint import set_checkpoint_early_stop  # noqa: E402

from benchmarks.common import environment, median, wake_zero_initialised  # noqa: E402
from modeling_harmon.atomic_files import write_json  # noqa: E402
from modeling_harmon.demo import build_random_model  # noqa: E402


SEED = 0
PROMPT = "a red circle on a blue background"
# (mode, gradient checkpointing kwargs or None for off, torch's early stop of recomputation)
MODES = [
    ("off", None, True),
    ("on", {"use_reentrant": False}, True),
    ("on, reentrant", {"use_reentrant": True}, True),
    ("on, no early stop", {"use_reentrant": False}, False),
]
# Block kind -> (where its blocks are listed on `model.model`, the sub-module each block body calls first).
BLOCKS = {
    "llm_layer": ("language_model.layers", "input_layernorm"),
    "mar_encoder_block": ("mar_encoder.layers", "norm1"),
    "mar_decoder_block": ("mar_decoder.layers", "norm1"),
    "head_block": ("diffusion_head.res_blocks", "adaLN_modulation"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="images (and prompts) per training step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per mode (medians are reported)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here (atomically)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def build(kwargs: dict | None):
    """(model, tokenizer): the tiny model in training mode, checkpointing on with `kwargs` (off for None)."""
    model, tokenizer = build_random_model(seed=SEED)
    wake_zero_initialised(model, SEED)
    if kwargs is not None:
        with warnings.catch_warnings():  # `gradient_checkpointing_enable` is a deprecated alias in newer transformers
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model.train(), tokenizer


def step_inputs(model, tokenizer, batch: int) -> dict:
    """A fixed batch: the same prompt `batch` times (plain text: its format does not matter here) and seeded random
    images in [-1, 1]."""
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]] * batch)
    size = model.config.image_size
    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(SEED)) * 2 - 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def training_step(model, inputs: dict, early_stop: bool) -> float:
    """One forward + backward with fixed random draws (mask, timesteps, noise, dropout); returns the loss."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)  # dropout
    with set_checkpoint_early_stop(False) if not early_stop else nullcontext():
        output = model.text_to_image_loss(**inputs, generator=torch.Generator().manual_seed(SEED))
        output.loss.backward()
    return output.loss.detach().item()


def head_inputs(model, batch: int) -> dict:
    """Seeded inputs of the diffusion loss alone, as many rows as the full step feeds the head."""
    config = model.config
    rows = batch * config.image_seq_length * config.diffusion_batch_mul
    generator = torch.Generator().manual_seed(SEED)
    return {
        "target": torch.randn(rows, config.token_dim, generator=generator),
        "condition": torch.randn(rows, config.decoder_hidden_size, generator=generator),
        "timesteps": torch.randint(0, config.num_train_timesteps, (rows,), generator=generator),
        "noise": torch.randn(rows, config.token_dim, generator=generator),
    }


def head_step(model, inputs: dict, early_stop: bool) -> float:
    """Forward + backward of the diffusion loss alone (the head's share of a step); returns the loss."""
    model.zero_grad(set_to_none=True)
    with set_checkpoint_early_stop(False) if not early_stop else nullcontext():
        loss = model.model.diffusion.training_losses(model.model.diffusion_head, **inputs)["loss"].mean()
        loss.backward()
    return loss.detach().item()


def count_block_starts(model, inputs: dict, early_stop: bool) -> dict[str, float]:
    """Block starts per block of each kind in one training step (1 = forward only, 2 = forward + one recompute)."""
    counts, handles = Counter(), []
    for kind, (path, first) in BLOCKS.items():
        for block in model.model.get_submodule(path):
            handles.append(
                block.get_submodule(first).register_forward_pre_hook(lambda *_, kind=kind: counts.update([kind]))
            )
    try:
        training_step(model, inputs, early_stop)
    finally:
        for handle in handles:
            handle.remove()
    return {kind: counts[kind] / len(model.model.get_submodule(path)) for kind, (path, _) in BLOCKS.items()}


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def prepare(kwargs: dict | None, early_stop: bool, args: argparse.Namespace) -> dict:
    """A mode's model and batch, its block starts per step and its gradients (that step is also its warm-up)."""
    model, tokenizer = build(kwargs)
    inputs = step_inputs(model, tokenizer, args.batch)
    calls = count_block_starts(model, inputs, early_stop)
    grads = gradients(model)
    head = head_inputs(model, args.batch)
    head_step(model, head, early_stop)  # warm-up
    return {
        "model": model,
        "inputs": inputs,
        "head_inputs": head,
        "early_stop": early_stop,
        "calls": calls,
        "grads": grads,
    }


def timed(step, model, inputs: dict, early_stop: bool) -> tuple[float, float]:
    start = time.perf_counter()
    loss = step(model, inputs, early_stop)
    return time.perf_counter() - start, loss


def max_difference(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    if grads.keys() != reference.keys():
        return float("inf")
    return max((float((grads[name] - reference[name]).abs().max()) for name in grads), default=0.0)


def format_table(report: dict) -> str:
    kinds = list(BLOCKS)
    header = (
        f"  {'mode':<18}"
        + "".join(f"{kind:>19}" for kind in kinds)
        + f"{'step s':>9}{'vs off':>8}{'head s':>9}{'vs off':>8}{'max |dgrad|':>13}"
    )
    lines = [header]
    off, head_off = report["modes"][0]["step_s"], report["modes"][0]["head_step_s"]
    for row in report["modes"]:
        calls = "".join(f"{row['block_starts_per_step'][kind]:>19g}" for kind in kinds)
        lines.append(
            f"  {row['mode']:<18}{calls}{row['step_s']:>9.4f}{row['step_s'] / off:>7.2f}x"
            f"{row['head_step_s']:>9.4f}{row['head_step_s'] / head_off:>7.2f}x"
            f"{row['max_grad_difference']:>13.2e}"
        )
    lines.append(
        "  block columns: times each block starts per training step (2 = forward + one recompute); step s: "
        "full training step; head s: the diffusion loss alone, forward + backward"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prepared = [prepare(kwargs, early_stop, args) for _, kwargs, early_stop in MODES]
    times = [[] for _ in MODES]
    head_times = [[] for _ in MODES]
    losses = [None] * len(MODES)
    for _ in range(args.repeats):  # round-robin, so drifting machine load spreads over every mode alike
        for index, mode in enumerate(prepared):
            seconds, losses[index] = timed(training_step, mode["model"], mode["inputs"], mode["early_stop"])
            times[index].append(seconds)
            seconds, _ = timed(head_step, mode["model"], mode["head_inputs"], mode["early_stop"])
            head_times[index].append(seconds)
    reference = prepared[0]["grads"]
    rows = [
        {
            "mode": mode,
            "checkpointing_kwargs": kwargs,
            "early_stop": early_stop,
            "block_starts_per_step": ready["calls"],
            "step_s": median(seconds),
            "step_s_all": seconds,
            "head_step_s": median(head_seconds),
            "head_step_s_all": head_seconds,
            "loss": loss,
            "max_grad_difference": max_difference(ready["grads"], reference),
        }
        for (mode, kwargs, early_stop), ready, seconds, head_seconds, loss in zip(
            MODES, prepared, times, head_times, losses
        )
    ]
    report = {
        "model": f"modeling_harmon.demo.build_random_model(seed={SEED}), zero-initialised parts woken",
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "modes": rows,
        **environment("cpu"),
    }
    print(
        f"tiny Harmon, one text-to-image training step, batch {args.batch}, {args.threads} thread(s) on cpu "
        f"({report['cpu']}), medians of {args.repeats}"
    )
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
