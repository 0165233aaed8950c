"""ShapesEval's metrics as local `evaluate` modules: `shapes_generation` (GenEval-like accuracies of checked images)
and `shapes_vqa` (exact-match accuracy of answers by question type).

Each lives in `<name>/<name>.py`, the layout `evaluate.load` reads from a folder, and is loaded from this package's
files: `evaluate.load("<name>")` would look for it on the Hub.
"""

from pathlib import Path


METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("shapes_generation", "shapes_vqa")


def load_metric(name: str):
    """The `evaluate.EvaluationModule` of the ShapesEval metric `name` (one of `METRIC_NAMES`), kept in memory (no
    cache files)."""
    import evaluate  # slow to import; only evaluation needs it

    if name not in METRIC_NAMES:
        raise ValueError(f"name must be one of {list(METRIC_NAMES)}, got {name!r}.")
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
