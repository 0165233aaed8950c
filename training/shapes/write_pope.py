"""Write Shapes-POPE: yes/no "is there a ...?" questions about rendered Shapes scenes, in the schema of lmms-eval's
`pope` task (lmms-lab's POPE dataset: `id`, `question_id`, `question`, `answer`, `image_source`, `image`,
`category`), as one parquet file that a task YAML loads offline (`dataset_path: parquet`).

    python -m training.shapes.write_pope                      # the file the `shapes_pope` task ships with
    python -m training.shapes.write_pope --n 200 --seed 1 --output /tmp/shapes_pope_test.parquet

The `shapes_pope` task (harmon_pipelines/evaluation/lmms/tasks/shapes_pope/) runs lmms-eval's own POPE processing
on it (issue 23). Items come in fours, like POPE's splits: a question about an object in the scene ("yes") and one
about an absent object ("no"), first with a `random` absent object, then with an `adversarial` one that shares its
colour or its shape with an object in the scene. Scenes and objects are from the training split (no held-out
colour-shape pair), rendered with the jitter ShapesEval uses; the questions are worded as the Shapes world words
them. Everything is a pure function of (`n`, `seed`).
"""

import argparse
import random
from pathlib import Path

from .world import COLORS, HELD_OUT_PAIRS, SHAPES, Scene, _article, render, sample_scene


# The file the shipped `shapes_pope` task loads, next to its YAML (lmms-eval resolves `data_files` from there).
TASK_FOLDER = Path("evaluation") / "lmms" / "tasks" / "shapes_pope"
DATA_FILE = "shapes_pope_test.parquet"
DEFAULT_N = 60
DEFAULT_SEED = 0
CATEGORIES = ("random", "adversarial")


def absent_object(scene: Scene, category: str, rng: random.Random) -> tuple[str, str]:
    """A (colour, shape) pair of the training split that `scene` does not show: any (`random`), or one sharing its
    colour or its shape with an object of the scene (`adversarial`, POPE's hard negatives)."""
    present = {(obj.color, obj.shape) for obj in scene.objects}
    options = [
        (color, shape)
        for color in COLORS
        for shape in SHAPES
        if (color, shape) not in present and (color, shape) not in HELD_OUT_PAIRS
    ]
    if category == "adversarial":
        options = [pair for pair in options if any(pair[0] == c or pair[1] == s for c, s in present)]
    return rng.choice(options)


def pope_rows(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[dict]:
    """`n` rows in POPE's schema (the `image` a PIL image). Item i asks about a present object when i is even and
    an absent one when i is odd; its category is CATEGORIES[(i // 2) % 2]."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    rows = []
    for index in range(n):
        rng = random.Random(f"shapes-pope-{seed}-{index}")
        scene = sample_scene(rng, "train")
        image = render(scene, rng)
        category = CATEGORIES[(index // 2) % len(CATEGORIES)]
        if index % 2 == 0:
            obj = rng.choice(scene.objects)
            (color, shape), answer = (obj.color, obj.shape), "yes"
        else:
            (color, shape), answer = absent_object(scene, category, rng), "no"
        rows.append(
            {
                "id": str(index),
                "question_id": f"shapes-pope-{seed}-{index}",
                "question": f"is there {_article(color)} {color} {shape}?",
                "answer": answer,
                "image_source": f"shapes: {scene.caption()}",
                "image": image,
                "category": category,
            }
        )
    return rows


def write_pope(output: str | Path, n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> Path:
    """Write [`pope_rows`] to the parquet file `output` (images as PNG bytes, with the `datasets` features that
    decode them back to PIL images); returns its path."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question_id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image_source": datasets.Value("string"),
            "image": datasets.Image(),
            "category": datasets.Value("string"),
        }
    )
    rows = pope_rows(n, seed)
    table = datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in features}, features=features)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(output))
    return output


def default_output() -> Path:
    """The shipped task's data file, in the installed `harmon_pipelines` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("harmon_pipelines")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("harmon_pipelines is not installed: pass --output")
    return Path(list(spec.submodule_search_locations)[0]) / TASK_FOLDER / DATA_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"questions (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed (default {DEFAULT_SEED})")
    parser.add_argument("--output", type=Path, default=None, help="parquet file (default: the shipped task's)")
    args = parser.parse_args(argv)
    path = write_pope(args.output or default_output(), n=args.n, seed=args.seed)
    print(f"wrote {args.n} Shapes-POPE questions to {path}")


if __name__ == "__main__":
    main()
