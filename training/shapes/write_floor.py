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


# Image-conditioned tasks (issue 21): items per task and the scores kept, measured with the model's own settings
# (MAR iterations scaled by the share drawn, paste-back on) and without the text-to-image reference drawings.
CANVAS_FLOORS = {"inpaint": (36, ("success", "kept")), "outpaint": (36, ("success",)), "vary": (18, ("0.3", "0.6"))}
# Instruction editing (issue 25), for a model trained to edit (`trained_tasks` lists "edit"): 36 items are six of each
# operation, all four groups of evaluation_edit.SPLIT_CYCLE among them.
EDIT_FLOOR = (36, ("success", "preservation"))


def measure_canvas_floors(model, tokenizer, seed: int = FLOOR_SEED) -> dict:
    """{task: {"n", "scores"}} for CANVAS_FLOORS (and EDIT_FLOOR for a model trained to edit); vary's scores are the
    `preserved` share at each strength."""
    from .evaluation_inpaint import evaluate_inpaint
    from .evaluation_outpaint import evaluate_outpaint
    from .evaluation_vary import evaluate_vary

    floors = {}
    for task, (n, keys) in CANVAS_FLOORS.items():
        if task == "vary":
            results = evaluate_vary(model, tokenizer, n=n, seed=seed)
            scores = {key: results["strengths"][key]["preserved"]["value"] for key in keys}
        else:
            evaluate = evaluate_inpaint if task == "inpaint" else evaluate_outpaint
            results = evaluate(model, tokenizer, n=n, seed=seed, reference=False)
            scores = {key: results[key]["value"] for key in keys}
        floors[task] = {"n": n, "seed": seed, "scores": {key: round(float(value), 4) for key, value in scores.items()}}
    if "edit" in (getattr(model.config, "trained_tasks", None) or []):
        from .evaluation_edit import evaluate_edit

        n, keys = EDIT_FLOOR
        results = evaluate_edit(model, tokenizer, n=n, seed=seed)
        scores = {key: round(float(results[key]["value"]), 4) for key in keys}
        floors["edit"] = {"n": n, "seed": seed, "scores": scores}
    return floors


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
    # Text-to-image's settings only: the image-conditioned ones (strength, image guidance) are 1 here anyway.
    settings = {
        key: value
        for key, value in generation_settings(model).items()
        if key not in ("strength", "image_guidance_scale")
    }
    results = evaluate_shapes(model, tokenizer, processor, n=n, seed=seed, settings=settings, progress=False)
    scores = {path: round(float(score_at(results, path)), 4) for path in FLOOR_SCORES}
    canvas = measure_canvas_floors(model, tokenizer, seed)
    return {"n": n, "seed": seed, "dtype": "float32", "settings": settings, "scores": scores, "canvas": canvas}


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
