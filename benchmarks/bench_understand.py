"""Visual question answering speed of Harmon against the plain Qwen2 it is built around.

Why: understanding is the LLM answering after a long image prompt ((size/16)² + buffer placeholder tokens filled
with VAE + MAR-encoder features). This measures what the image costs in the prefill (VAE encode and MAR encoder
against the LLM) and whether Harmon's decode steps cost more than plain Qwen2's on a prompt of the same length.

How: a preset with seeded random weights (speed depends on shapes only). The `tiny` preset builds its prompt with
`HarmonProcessor` from a random image and a question; the others (no Qwen tokenizer offline) use synthetic token
ids in the same layout: chat-template tokens, the `<image>` placeholders, the question, the assistant header. Our
path is `model.generate(input_ids, attention_mask, pixel_values, ...)`; the plain path is `Qwen2ForCausalLM`
holding a copy of the same LLM weights, generating from random ids of the same total length. Both decode greedily
exactly `--new-tokens` tokens. A streamer stamps the time of each new token: prefill = call start to the first
token, decode rate = the remaining tokens over the time after the first. Medians of `--repeats` runs after a
warm-up run of each.

    OMP_NUM_THREADS=1 python benchmarks/bench_understand.py --preset 0.5b --size 256 --new-tokens 32 \
        --dtype bf16 --threads 1 --json runs/bench/understand_0.5b.json
"""

import argparse
import sys
from pathlib import Path


if __package__ in (None, ""):  # run as `python benchmarks/bench_understand.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import Qwen2ForCausalLM  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from benchmarks.common import (  # noqa: E402
    DTYPES,
    PRESETS,
    SEED,
    build_model,
    device_problem,
    environment,
    median,
    preset_config,
    size_problem,
    stage_meter,
    stages_with_other,
    wall_clock,
)
from modeling_harmon import HarmonProcessor  # noqa: E402
from modeling_harmon.atomic_files import write_json  # noqa: E402
from modeling_harmon.demo import build_byte_tokenizer  # noqa: E402


QUESTION = "Describe the image in detail."
# Synthetic layout of `<|im_start|>user\n<image>...\n{question}<|im_end|>\n<|im_start|>assistant\n` in Qwen tokens.
TEMPLATE_PREFIX_LENGTH = 3
QUESTION_LENGTH = 7  # "\n" and the question
TEMPLATE_SUFFIX_LENGTH = 5
PREFILL_STAGES = ("vae", "mar_encoder", "llm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, required=True)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels: 256 or 512 (any multiple of 16)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded (exactly) per answer")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path (medians are reported)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here (atomically)")
    args = parser.parse_args(argv)
    for problem in (size_problem(args.size, preset_config(args.preset)), device_problem(args.device)):
        if problem is not None:
            parser.error(problem)
    if args.new_tokens < 2:
        parser.error(f"--new-tokens must be >= 2 (the first token ends the prefill), got {args.new_tokens}.")
    for name in ("threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    return args


# ----------------------------------------------------------------------------------------------------- inputs
def processor_inputs(model, size: int) -> dict[str, torch.Tensor]:
    """The tiny preset's prompt, built as a user would: chat template + random image through `HarmonProcessor`."""
    tokenizer, _ = build_byte_tokenizer()
    processor = HarmonProcessor.from_model_config(model.config, tokenizer, image_size=size)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    pixels = np.random.default_rng(SEED).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return dict(processor(images=[Image.fromarray(pixels)], text=[text], return_tensors="pt"))


def synthetic_inputs(model, size: int) -> dict[str, torch.Tensor]:
    """The processor's prompt layout with synthetic ids (no tokenizer of the full vocabulary offline), and a
    random image in [-1, 1]."""
    config = model.config
    generator = torch.Generator().manual_seed(SEED)

    def text(length: int) -> torch.Tensor:
        return torch.randint(0, config.text_config.vocab_size, (length,), generator=generator)

    image = torch.full((config.num_image_placeholders(size, size),), config.image_token_id)
    ids = torch.cat([text(TEMPLATE_PREFIX_LENGTH), image, text(QUESTION_LENGTH), text(TEMPLATE_SUFFIX_LENGTH)])[None]
    pixel_values = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixel_values}


def understanding_inputs(model, preset: str, size: int, device: str) -> dict[str, torch.Tensor]:
    inputs = processor_inputs(model, size) if preset == "tiny" else synthetic_inputs(model, size)
    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def plain_language_model(model) -> Qwen2ForCausalLM:
    """Qwen2ForCausalLM from the same text config, holding a copy of the Harmon model's LLM and LM-head weights."""
    torch.manual_seed(SEED)
    plain = Qwen2ForCausalLM(model.config.text_config)
    plain.model.load_state_dict(model.model.language_model.state_dict())
    plain.lm_head.load_state_dict(model.lm_head.state_dict())
    return plain.to(device=model.device, dtype=model.dtype).eval()


# ------------------------------------------------------------------------------------------------ measurement
class TokenClock(BaseStreamer):
    """Stamps the time of each generated token (`generate` first puts the prompt, then each new token), and copies
    the stage totals at the first new token: what the prefill spent in each stage."""

    def __init__(self, clock, stage_totals: dict | None = None):
        self.clock = clock
        self.stage_totals = stage_totals
        self.prompt_seen = False
        self.token_times: list[float] = []
        self.prefill_stages: dict | None = None

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.token_times.append(self.clock())
        if self.prefill_stages is None and self.stage_totals is not None:
            self.prefill_stages = dict(self.stage_totals)

    def end(self):
        """Nothing is buffered, so there is nothing to flush."""


def generation_settings(config, new_tokens: int) -> dict:
    """Greedy decoding of exactly `new_tokens` tokens, with the Harmon model's special tokens for both paths."""
    return {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def timed_generate(model, inputs: dict, settings: dict, device: str, stage_targets: dict | None = None) -> dict:
    """Prefill seconds and decode tokens/s of one `generate` with `settings` (and the prefill's split over
    `stage_targets`, when given)."""
    clock = wall_clock(device)
    new_tokens = settings["max_new_tokens"]
    with stage_meter(stage_targets or {}, clock) as totals:
        streamer = TokenClock(clock, totals if stage_targets else None)
        start = clock()
        model.generate(**inputs, **settings, streamer=streamer)
    times = streamer.token_times
    if len(times) != new_tokens:
        raise RuntimeError(f"generate produced {len(times)} tokens, expected {new_tokens}.")
    run = {"prefill_s": times[0] - start, "decode_tokens_per_s": (new_tokens - 1) / (times[-1] - times[0])}
    if stage_targets:
        run["prefill_stages"] = stages_with_other(streamer.prefill_stages, run["prefill_s"])
    return run


def measure(model, inputs: dict, settings: dict, args: argparse.Namespace, stage_targets: dict | None = None) -> dict:
    """A warm-up run, then medians of `--repeats` runs; the prefill split is that of the median-prefill run."""
    timed_generate(model, inputs, settings, args.device)
    runs = sorted(
        (timed_generate(model, inputs, settings, args.device, stage_targets) for _ in range(args.repeats)),
        key=lambda run: run["prefill_s"],
    )
    result = dict(runs[len(runs) // 2])
    result["decode_tokens_per_s"] = median([run["decode_tokens_per_s"] for run in runs])
    return result


def prefill_targets(model) -> dict[str, list[tuple[object, str]]]:
    inner = model.model
    return {
        "vae": [(inner, "encode_images")],
        "mar_encoder": [(inner.mar_encoder, "forward")],
        "llm": [(inner, "run_language_model")],
    }


# ----------------------------------------------------------------------------------------------------- report
def format_table(report: dict) -> str:
    ours, plain = report["ours"], report["plain"]
    stages = ours["prefill_stages"]
    rows = [
        ("prompt tokens", f"{report['prompt_tokens']}", f"{report['prompt_tokens']}"),
        ("prefill s", f"{ours['prefill_s']:.4f}", f"{plain['prefill_s']:.4f}"),
        ("  VAE encode s", f"{stages['vae']:.4f}", "-"),
        ("  MAR encoder s", f"{stages['mar_encoder']:.4f}", "-"),
        ("  LLM s", f"{stages['llm']:.4f}", f"{plain['prefill_s']:.4f}"),
        ("  other s", f"{stages['other']:.4f}", "-"),
        ("decode tokens/s", f"{ours['decode_tokens_per_s']:.2f}", f"{plain['decode_tokens_per_s']:.2f}"),
    ]
    lines = [f"  {'':<18}{'Harmon':>12}{'plain Qwen2':>14}"]
    lines += [f"  {name:<18}{mine:>12}{theirs:>14}" for name, mine, theirs in rows]
    lines.append(
        f"  decode overhead: {report['decode_overhead_pct']:+.1f}% (plain tokens/s / Harmon tokens/s - 1); "
        f"prefill x{report['prefill_ratio']:.2f} of plain"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model(args.preset, args.dtype, args.device)
    inputs = understanding_inputs(model, args.preset, args.size, args.device)
    prompt_tokens = inputs["input_ids"].shape[1]
    settings = generation_settings(model.config, args.new_tokens)
    ours = measure(model, inputs, settings, args, prefill_targets(model))
    ours["image_encode_s"] = ours["prefill_stages"]["vae"] + ours["prefill_stages"]["mar_encoder"]
    plain_model = plain_language_model(model)
    ids = torch.randint(
        0, model.config.text_config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(SEED)
    ).to(args.device)
    plain = measure(plain_model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, settings, args)
    report = {
        "preset": args.preset,
        "size": args.size,
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        "threads": args.threads,
        "device": args.device,
        "repeats": args.repeats,
        "prompt_tokens": prompt_tokens,
        "image_tokens": model.config.num_image_placeholders(args.size, args.size),
        "ours": ours,
        "plain": plain,
        "prefill_ratio": ours["prefill_s"] / plain["prefill_s"],
        "decode_overhead_pct": (plain["decode_tokens_per_s"] / ours["decode_tokens_per_s"] - 1) * 100,
        **environment(args.device),
    }
    print(
        f"{args.preset} VQA, {args.size}px image, {args.new_tokens} new tokens, {args.dtype}, {args.threads} "
        f"thread(s) on {args.device} ({report['cpu']}), medians of {args.repeats}"
    )
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
