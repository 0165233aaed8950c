"""Measure the shipped model's ShapesEval scores on the small fixed subset that CI re-checks
(tests/test_default_model.py), and write them as the model's regression floor `shapes_floor.json`.

    python -m training.shapes.write_floor --folder pipelines/default_model

Run it after every re-export of the default model: the test asserts each score stays within 0.05 of this file.
"""

import argparse
import json
from pathlib import Path

import torch

from modeling_harmon.atomic_files import write_json

from .evaluation import evaluate_shapes


# Small enough for CI (about 15 s on one thread), and every score the floor checks has items in it.
FLOOR_N = 36
FLOOR_SEED = 0
FLOOR_SCORES = (
    "generation.overall",
    "generation.single_object",
    "generation.colors",
    "generation.attributes.color",
    "generation.attributes.shape",
    "generation.attributes.position",
    "generation.attributes.count",
    "vqa.accuracy",
)


def score_at(results: dict, path: str):
    """The score at a dotted `path` of FLOOR_SCORES (e.g. "generation.attributes.shape") in ShapesEval results."""
    value = results
    for key in path.split("."):
        value = value[key]
    return value


def measure_floor(folder: str, n: int = FLOOR_N, seed: int = FLOOR_SEED) -> dict:
    """The floor file's content for the model in `folder`: fp32, its own generation settings with ShapesEval's
    MAR iterations, all pinned in the file so later runs use exactly them."""
    from harmon_pipelines.default_model import load_model_and_tokenizer, load_processor

    from .evaluation import generation_settings

    model, tokenizer = load_model_and_tokenizer(folder, device="cpu", dtype=torch.float32)
    processor = load_processor(folder, model, tokenizer)
    settings = generation_settings(model)
    results = evaluate_shapes(model, tokenizer, processor, n=n, seed=seed, settings=settings, progress=False)
    scores = {path: round(float(score_at(results, path)), 4) for path in FLOOR_SCORES}
    return {"n": n, "seed": seed, "dtype": "float32", "settings": settings, "scores": scores}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="the exported default model folder")
    args = parser.parse_args(argv)
    if not (args.folder / "config.json").is_file():
        parser.error(f"--folder {args.folder} holds no config.json")
    floor = measure_floor(str(args.folder))
    write_json(floor, args.folder / "shapes_floor.json")
    print(json.dumps(floor["scores"], indent=2))


if __name__ == "__main__":
    main()
