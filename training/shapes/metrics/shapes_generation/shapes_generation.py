"""ShapesEval generation metric: GenEval-like accuracies from per-image checks of generated Shapes images."""

import datasets
import evaluate


_DESCRIPTION = """
Scores of a text-to-image model on prompts of the Shapes world (training/shapes/world.py), from the per-attribute
verdicts of the model-free checker (training/shapes/checker.py `check`), one row per generated image. An image is
right overall when every attribute that applies to its scene kind is right. Like GenEval's categories:
single_object, two_object and counting are the overall accuracy on `single`, `two` and `count` scenes; colors is the
colour accuracy on `single` scenes; position the position accuracy on `single` scenes (nearest centre) and `two`
scenes (relation); color_attr the colour-attribution accuracy on `two` scenes. `attributes` gives each attribute's
accuracy over every scene it applies to, `held_out` the same scores over the rows with a held-out (colour, shape)
pair. Every score is a fraction in [0, 1], or None when no row counts towards it.
"""

_KWARGS_DESCRIPTION = """
Args (one entry per generated image; the attributes are True/False, or None where they do not apply):
    kind (`list[str]`): scene kind, "single", "two" or "count".
    held_out (`list[bool]`): whether the scene holds a held-out (colour, shape) pair.
    color, shape, position, count (`list[bool | None]`): correctness of each attribute; position is None for
        `count` scenes.
    color_attr (`list[bool | None]`): each colour on its shape; only for `two` scenes.
Returns:
    dict: overall, single_object, two_object, counting, colors, position, color_attr, attributes {color, shape,
    position, count}, held_out {the same keys}.
Example:
    >>> metric = load_metric("shapes_generation")
    >>> metric.compute(kind=["single"], held_out=[False], color=[True], shape=[True], position=[False], count=[True],
    ...                color_attr=[None])["overall"]
    0.0
"""

_CITATION = """
@inproceedings{ghosh2023geneval,
  title={GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment},
  author={Ghosh, Dhruba and Hajishirzi, Hannaneh and Schmidt, Ludwig},
  booktitle={NeurIPS Datasets and Benchmarks},
  year={2023}
}
"""

# The attributes judged for each scene kind (as training/shapes/checker.py judges them); the others must be None.
APPLICABLE = {
    "single": ("color", "shape", "position", "count"),
    "two": ("color", "shape", "position", "count", "color_attr"),
    "count": ("color", "shape", "count"),
}
ATTRIBUTES = ("color", "shape", "position", "count", "color_attr")


def _fraction(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _scores(rows: list[dict]) -> dict:
    def over(kinds: tuple[str, ...], key: str) -> float | None:
        return _fraction([row[key] for row in rows if row["kind"] in kinds and row[key] is not None])

    return {
        "overall": over(tuple(APPLICABLE), "overall"),
        "single_object": over(("single",), "overall"),
        "two_object": over(("two",), "overall"),
        "counting": over(("count",), "overall"),
        "colors": over(("single",), "color"),
        "position": over(("single", "two"), "position"),
        "color_attr": over(("two",), "color_attr"),
        "attributes": {key: over(tuple(APPLICABLE), key) for key in ("color", "shape", "position", "count")},
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ShapesGeneration(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "kind": datasets.Value("string"),
                    "held_out": datasets.Value("bool"),
                    **{key: datasets.Value("bool") for key in ATTRIBUTES},
                }
            ),
        )

    def _compute(self, kind, held_out, color, shape, position, count, color_attr):
        rows = []
        for index, values in enumerate(zip(kind, held_out, color, shape, position, count, color_attr)):
            row = dict(zip(("kind", "held_out", *ATTRIBUTES), values))
            if row["kind"] not in APPLICABLE:
                raise ValueError(f"kind[{index}] must be one of {list(APPLICABLE)}, got {row['kind']!r}.")
            judged = tuple(key for key in ATTRIBUTES if row[key] is not None)
            if judged != APPLICABLE[row["kind"]]:
                raise ValueError(
                    f"row {index} judges {list(judged)}; a {row['kind']!r} scene needs exactly "
                    f"{list(APPLICABLE[row['kind']])} (the others None)."
                )
            if row["held_out"] is None:
                raise ValueError(f"held_out[{index}] must be True or False, got None.")
            row["overall"] = all(row[key] for key in judged)
            rows.append(row)
        return {**_scores(rows), "held_out": _scores([row for row in rows if row["held_out"]])}
