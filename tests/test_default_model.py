"""Regression floor of the embedded default model: ShapesEval on a fixed subset, with the dtype (fp32) and the
sampler settings pinned, must stay within 0.05 of what was measured when the model was shipped
(`pipelines/default_model/shapes_floor.json`)."""

import json

import pytest
import torch

from harmon_pipelines.default_model import DEFAULT_MODEL_DIR


FLOOR_FILE = DEFAULT_MODEL_DIR / "shapes_floor.json"
TOLERANCE = 0.05

pytestmark = pytest.mark.skipif(not FLOOR_FILE.is_file(), reason="no trained default model is packaged yet")


def test_shipped_model_stays_above_its_measured_floor():
    from harmon_pipelines.default_model import load_default_model, load_processor
    from harmon_training.shapes.evaluation import evaluate_shapes
    from harmon_training.shapes.write_floor import score_at

    floor = json.loads(FLOOR_FILE.read_text())
    model, tokenizer = load_default_model(dtype=torch.float32)
    processor = load_processor(None, model, tokenizer)
    results = evaluate_shapes(
        model, tokenizer, processor, n=floor["n"], seed=floor["seed"], settings=floor["settings"], progress=False
    )
    for path, measured in floor["scores"].items():
        value = score_at(results, path)
        assert value >= measured - TOLERANCE, f"{path}: {value:.3f} < shipped {measured:.3f} - {TOLERANCE}"
