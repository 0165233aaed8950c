"""ShapesEval through GenEval's file layout: the harness of `harmon eval geneval` proven end to end on a real trained
model, on a CPU, in CI.

    harmon eval shapes --write-geneval-metadata shapes_metadata.jsonl --n 180   # ShapesEval's prompts, GenEval format
    harmon eval geneval --metadata shapes_metadata.jsonl --outdir shapes_geneval/ -n 1
    harmon eval shapes --score-geneval shapes_geneval/ --json scores.json       # the Shapes checker reads the layout

GenEval's scorer (an mmdet object detector and CLIP) knows nothing of flat circles and squares, so the judge here is
the model-free Shapes checker; everything before it (the metadata lines, the prompt folders, the sample files, the
resumable batch drawing) is what a real GenEval run uses. Each metadata line is a GenEval line (`tag`, `include`
with `class`, `count`, `color` and `position` clauses, `prompt`) plus two keys GenEval's scorer ignores:
`shapes_scene` (the scene the checker judges against) and `seed` (ShapesEval draws prompt i with seed + i, so the
scores equal `harmon eval shapes` on the same prompts, seeds and settings).
"""

from pathlib import Path

import numpy as np
from PIL import Image

from .checker import check
from .evaluation import generation_scores, prompt_scenes
from .world import Scene, ShapeObject


# GenEval's position words for the Shapes world's relation phrases (objects[0] RELATION objects[1]).
GENEVAL_RELATIONS = {"to the left of": "left of", "to the right of": "right of", "above": "above", "below": "below"}
GENEVAL_TAGS = {"single": "single_object", "two": "position", "count": "counting"}


def scene_to_geneval(scene: Scene, seed: int) -> dict:
    """One GenEval metadata line for `scene`, with the scene itself and its seed for the Shapes checker."""
    first = scene.objects[0]
    if scene.kind == "count":
        include = [{"class": first.shape, "count": len(scene.objects), "color": first.color}]
    else:
        include = [{"class": obj.shape, "count": 1, "color": obj.color} for obj in scene.objects]
        if scene.kind == "two":  # "A RELATION B": GenEval lists B first and points A's position clause at it
            include[0]["position"] = [GENEVAL_RELATIONS[scene.relation], 0]
            include.reverse()
    return {
        "tag": GENEVAL_TAGS[scene.kind],
        "include": include,
        "prompt": scene.caption(),
        "seed": seed,
        "shapes_scene": {
            "kind": scene.kind,
            "objects": [{"shape": obj.shape, "color": obj.color, "position": obj.position} for obj in scene.objects],
            "relation": scene.relation,
        },
    }


def geneval_metadata(n: int, seed: int = 0) -> list[dict]:
    """ShapesEval's `n` generation prompts of `seed` as GenEval metadata lines (prompt i drawn with seed + i)."""
    return [scene_to_geneval(scene, seed + index) for index, scene in enumerate(prompt_scenes(n, seed))]


def scene_from_geneval(metadata: dict, where: str) -> Scene:
    """The Scene a metadata line's `shapes_scene` describes; a line without one is not a Shapes prompt."""
    described = metadata.get("shapes_scene")
    if not isinstance(described, dict):
        raise ValueError(
            f"{where}: no 'shapes_scene' key; only metadata written by `harmon eval shapes --write-geneval-metadata` "
            "can be scored by the Shapes checker (GenEval's own prompts need GenEval's scorer, docs/evaluation.md)"
        )
    try:
        objects = tuple(ShapeObject(**obj) for obj in described["objects"])
        return Scene(described["kind"], objects, described.get("relation"))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{where}: 'shapes_scene' is malformed ({error})") from None


def score_geneval_layout(samples: list[tuple[dict, Path]]) -> dict:
    """ShapesEval's generation scores of the images of a GenEval layout, as `iter_geneval_samples` lists them."""
    if not samples:
        raise ValueError("the folder holds no GenEval samples (NNNNN/metadata.jsonl with NNNNN/samples/KKKK.png)")
    scenes, checks = [], []
    for metadata, path in samples:
        scene = scene_from_geneval(metadata, str(path.parent.parent / "metadata.jsonl"))
        with Image.open(path) as image:
            checks.append(check(scene, np.asarray(image.convert("RGB"))))
        scenes.append(scene)
    return {"n": len(samples), "generation": generation_scores(scenes, checks)}
