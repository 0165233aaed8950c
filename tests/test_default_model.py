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


def test_shipped_model_stays_above_its_image_conditioned_floors():
    """Inpainting, outpainting and variations (issue 21) on the floor file's fixed items, within TOLERANCE."""
    from harmon_pipelines.default_model import load_default_model
    from harmon_training.shapes.write_floor import measure_canvas_floors

    floor = json.loads(FLOOR_FILE.read_text())
    if "canvas" not in floor:
        pytest.skip("the floor file was written before the image-conditioned floors")
    model, tokenizer = load_default_model(dtype=torch.float32)
    measured = measure_canvas_floors(model, tokenizer, floor["seed"])
    for task, shipped in floor["canvas"].items():
        assert measured[task]["n"] == shipped["n"], task
        for key, value in shipped["scores"].items():
            got = measured[task]["scores"][key]
            assert got >= value - TOLERANCE, f"{task}.{key}: {got:.3f} < shipped {value:.3f} - {TOLERANCE}"


def test_every_entry_point_draws_with_the_models_own_defaults(tmp_path, capsys):
    """No settings given: the diffusers pipeline, the transformers `pipeline("text-to-image")` and `harmon generate`
    all draw with the model's stored defaults, so the same prompt and seed give the same pixels."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    from harmon_pipelines import HarmonPipeline
    from harmon_pipelines.cli import main
    from harmon_pipelines.default_model import load_default_model

    prompt, seed = "a red circle on the left", 3
    assert main(["generate", prompt, "-o", str(tmp_path / "cli.png"), "--seed", str(seed)]) == 0, capsys.readouterr()
    drawn = {"harmon generate": np.asarray(Image.open(tmp_path / "cli.png").convert("RGB"))}
    model, tokenizer = load_default_model(dtype=torch.float32)
    diffusers_pipe = HarmonPipeline(model=model, tokenizer=tokenizer)
    diffusers_pipe.set_progress_bar_config(disable=True)
    drawn["HarmonPipeline"] = np.asarray(
        diffusers_pipe(prompt, generator=torch.Generator().manual_seed(seed)).images[0]
    )
    text_to_image = pipeline("text-to-image", model=model, tokenizer=tokenizer)
    drawn["pipeline(text-to-image)"] = np.asarray(
        text_to_image(prompt, generator=torch.Generator().manual_seed(seed))[0]
    )
    for name, pixels in drawn.items():
        np.testing.assert_array_equal(pixels, drawn["harmon generate"], err_msg=name)
