"""Faster sampling settings that change results, and what each costs in quality: ShapesEval generation accuracy vs
seconds per image on the shipped Shapes model (or `--model`).

The settings are the opt-in knobs of `generate_images`: other numbers of diffusion-head steps (respacing the 1000
training steps to 100, 25 or 10) and of MAR iterations, and a linear CFG schedule. Every row draws the same prompts
with the same seeds, so rows differ only by the setting.

    python benchmarks/sampling_tradeoffs.py --n 90 --threads 1 --json tradeoffs.json
"""

import argparse
import json
import os
import sys
import tempfile

import torch


# (label, overrides of the model's defaults); the first row is the reference point.
ROWS = [
    ("defaults", {}),
    ("head steps 100", {"num_sampling_steps": 100}),
    ("head steps 25", {"num_sampling_steps": 25}),
    ("head steps 10", {"num_sampling_steps": 10}),
    ("MAR iterations 16", {"num_iter": 16}),  # the default before the tenth pass (now 6)
    ("MAR iterations 8", {"num_iter": 8}),
    ("MAR iterations 4", {"num_iter": 4}),
    ("linear CFG", {"cfg_schedule": "linear"}),
    ("head steps 25 + MAR iterations 4", {"num_sampling_steps": 25, "num_iter": 4}),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Harmon folder (default: the packaged Shapes model)")
    parser.add_argument("--n", type=int, default=90, help="ShapesEval prompts per row (default 90)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def load(path):
    from harmon_pipelines.default_model import load_default_model, load_model_and_tokenizer, load_processor

    if path is None:
        model, tokenizer = load_default_model(dtype=torch.float32)
    else:
        model, tokenizer = load_model_and_tokenizer(path, device="cpu", dtype=torch.float32)
    return model, tokenizer, load_processor(path, model, tokenizer)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from harmon_training.shapes.evaluation import evaluate_shapes, generation_settings

    model, tokenizer, processor = load(args.model)
    # Warm-up, so the first row's time does not include one-off costs (allocator, kernel selection).
    evaluate_shapes(model, tokenizer, processor, n=2, seed=args.seed, vqa=False, progress=False)
    rows = []
    for label, overrides in ROWS:
        settings = generation_settings(model, **overrides)
        results = evaluate_shapes(
            model, tokenizer, processor, n=args.n, seed=args.seed, settings=settings, vqa=False, progress=False
        )
        generation = results["generation"]
        rows.append(
            {
                "setting": label,
                "settings": results["settings"],
                "seconds_per_image": results["seconds_per_image"],
                "overall": generation["overall"],
                "attributes": generation["attributes"],
            }
        )
        print(
            f"{label:34s} {results['seconds_per_image']:7.3f} s/image  overall {generation['overall']:.3f}  "
            + "  ".join(f"{k} {v:.2f}" for k, v in generation["attributes"].items()),
            flush=True,
        )
    if args.json:
        payload = {
            "n": args.n,
            "seed": args.seed,
            "threads": args.threads,
            "model": args.model or "packaged",
            "rows": rows,
        }
        directory = os.path.dirname(os.path.abspath(args.json))
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(handle.name, args.json)
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
