"""Draw a fixed set of images with one checkout's code, to compare two checkouts' pixels on the same host.

Why: a refactor of the sampler must not change what it draws. Kernels round differently across hosts, so the check
is two checkouts, in one session, on one machine: draw with each, then compare (`--compare A.npz B.npz` prints the
largest difference per case, in 1/255 steps of the 8-bit images).

    python benchmarks/draw_fixed_images.py --tree /path/to/old/checkout --out old.npz
    python benchmarks/draw_fixed_images.py --tree . --out new.npz
    python benchmarks/draw_fixed_images.py --compare old.npz new.npz [--json diff.json]

The cases use only `generate_images` arguments that every version since the first has: the embedded Shapes model
with its own defaults, without guidance, with the linear guidance schedule, with a negative prompt, and a batch of
two prompts with one generator per image; and a small random model (64 iterations' worth of tokens, guidance 3).
"""

import argparse
import json
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent


def _cases():
    seeds = [0, 1]
    demo = [
        ("demo_defaults", {"prompt": "a red circle on the left"}),
        ("demo_no_guidance", {"prompt": "a blue square", "guidance_scale": 1.0}),
        ("demo_linear_schedule", {"prompt": "two green triangles", "cfg_schedule": "linear", "guidance_scale": 3.0}),
        ("demo_negative_prompt", {"prompt": "a yellow circle", "negative_prompt": "a red circle"}),
        ("demo_batch", {"prompt": ["a red square at the top", "a blue circle at the bottom"], "per_image": True}),
    ]
    tiny = [
        ("tiny_guided", {"prompt": "a red circle", "num_iter": 8, "guidance_scale": 3.0, "num_sampling_steps": 10})
    ]
    return seeds, demo, tiny


def draw(tree: Path, out: Path) -> None:
    sys.path.insert(0, str(tree.resolve()))
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    import modeling_harmon  # noqa: F401  (registers the Auto classes of that checkout)
    from modeling_harmon.demo import build_random_model

    torch.set_num_threads(1)
    print(f"modeling_harmon from {Path(modeling_harmon.__file__).parent}", file=sys.stderr)
    demo_dir = REPO_ROOT / "pipelines" / "default_model"
    demo = AutoModel.from_pretrained(demo_dir, dtype=torch.float32).eval()
    demo_tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    tiny, tiny_tokenizer = build_random_model(seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # wake the zero-initialised layers, so the prompt matters (as the tests' fixture does)
        for parameter in tiny.parameters():
            if parameter.numel() and torch.count_nonzero(parameter) == 0:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    seeds, demo_cases, tiny_cases = _cases()
    arrays = {}
    for model, tokenizer, cases in ((demo, demo_tokenizer, demo_cases), (tiny.eval(), tiny_tokenizer, tiny_cases)):
        for name, arguments in cases:
            arguments = dict(arguments)
            per_image = arguments.pop("per_image", False)
            for seed in seeds:
                count = len(arguments["prompt"]) if per_image else 1
                generators = [torch.Generator().manual_seed(seed + k) for k in range(count)]
                output = model.generate_images(
                    **arguments, tokenizer=tokenizer, generator=generators if per_image else generators[0]
                )
                pixels = ((output.images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                arrays[f"{name}_seed{seed}"] = pixels.cpu().numpy()
    np.savez(out, **arrays)
    print(f"wrote {len(arrays)} cases to {out}", file=sys.stderr)


def compare(first: Path, second: Path, json_path: Path | None) -> int:
    import numpy as np

    a, b = np.load(first), np.load(second)
    if set(a.files) != set(b.files):
        print(f"the files hold different cases: {sorted(set(a.files) ^ set(b.files))}", file=sys.stderr)
        return 1
    rows = {name: int(np.abs(a[name].astype(np.int16) - b[name].astype(np.int16)).max()) for name in sorted(a.files)}
    print(f"{'case':32} max |difference| (in 1/255)")
    for name, difference in rows.items():
        print(f"{name:32} {difference}")
    worst = max(rows.values())
    print(f"largest: {worst}/255 over {len(rows)} cases; identical cases: {sum(v == 0 for v in rows.values())}")
    if json_path is not None:
        json_path.write_text(json.dumps({"max_abs_difference_per_case": rows, "largest": worst}, indent=2) + "\n")
    return 0 if worst <= 1 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="the checkout whose modeling_harmon draws")
    parser.add_argument("--out", type=Path, help="where to write the images (.npz)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.npz", "B.npz"), help="compare two drawings")
    parser.add_argument("--json", type=Path, default=None, help="with --compare: also write the differences")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare, args.json)
    if args.out is None:
        parser.error("give --out FILE.npz (or --compare A.npz B.npz)")
    draw(args.tree, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
