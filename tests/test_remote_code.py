"""Hub remote code: a saved checkpoint loads with `trust_remote_code=True` in a fresh process where the
`modeling_harmon` package cannot be imported, from a folder and by repo id from an offline Hub cache, and gives
the same outputs. `HARMON_REMOTE_PYTHONS` (os.pathsep-separated interpreters, e.g. a venv with the newest
transformers) adds more interpreters to load with.
"""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .hub_utils import child_env, interpreters, make_offline_cache


CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_harmon"] = None  # the pip package must not be importable: only the remote code
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForImageTextToText, AutoTokenizer

    source, inputs_path, output_path = sys.argv[1:4]
    torch.set_num_threads(1)
    inputs = load_file(inputs_path)
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=True)) is type(model)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    with torch.no_grad():
        logits = model(input_ids=inputs["vqa_ids"], pixel_values=inputs["pixels"]).logits
    text = model.generate(input_ids=inputs["vqa_ids"], pixel_values=inputs["pixels"], max_new_tokens=4, do_sample=False)
    image = model.generate_images(
        "a red circle", tokenizer=tokenizer, num_iter=3, generator=[torch.Generator().manual_seed(7)]
    )
    save_file({"logits": logits, "text": text, "latents": image.latents, "images": image.images}, output_path)
    import transformers
    print("loaded with transformers", transformers.__version__)
    """
)


def _reference_outputs(model, tokenizer, inputs):
    with torch.no_grad():
        logits = model(input_ids=inputs["vqa_ids"], pixel_values=inputs["pixels"]).logits
    text = model.generate(
        input_ids=inputs["vqa_ids"], pixel_values=inputs["pixels"], max_new_tokens=4, do_sample=False
    )
    image = model.generate_images(
        "a red circle", tokenizer=tokenizer, num_iter=3, generator=[torch.Generator().manual_seed(7)]
    )
    return {"logits": logits, "text": text, "latents": image.latents, "images": image.images}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model, tokenizer):
    folder = tmp_path_factory.mktemp("remote") / "tiny-harmon"
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = tiny_model.config
    text = config.prompt_template.format(input="<image>" * config.num_image_placeholders() + "\nwhat color?")
    inputs = {
        "vqa_ids": torch.tensor([tokenizer(text)["input_ids"]]),
        "pixels": torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,
    }
    inputs_path = folder.parent / "inputs.safetensors"
    save_file(inputs, str(inputs_path))
    return folder, inputs_path, _reference_outputs(tiny_model, tokenizer, inputs)


def test_saved_folder_is_self_contained(saved):
    folder = saved[0]
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert {
        "configuration_harmon.py",
        "modeling_harmon.py",
        "modeling_harmon_mar.py",
        "modeling_harmon_diffusion.py",
    } <= names
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_harmon.HarmonForConditionalGeneration"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_harmon.HarmonForConditionalGeneration"
    generation = json.loads((folder / "generation_config.json").read_text())
    assert "image_generation" in generation and "guidance_scale" not in generation
    for path in folder.glob("*.py"):
        source = path.read_text()
        assert "from modeling_harmon" not in source and "import modeling_harmon" not in source, path.name


def _run_child(python: str, source: str, inputs: Path, output: Path, env: dict) -> None:
    script = output.parent / "load_remote.py"
    script.write_text(CHILD)
    result = subprocess.run(
        [python, str(script), source, str(inputs), str(output)],
        cwd=output.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{python} failed:\n{result.stdout}\n{result.stderr[-4000:]}"


def _assert_same(outputs: dict, expected: dict) -> None:
    torch.testing.assert_close(outputs["logits"], expected["logits"], atol=1e-5, rtol=1e-5)
    assert torch.equal(outputs["text"], expected["text"])
    torch.testing.assert_close(outputs["latents"], expected["latents"], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(outputs["images"], expected["images"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("python", interpreters())
def test_load_from_folder_in_fresh_process(saved, tmp_path, python):
    folder, inputs, expected = saved
    output = tmp_path / "out.safetensors"
    _run_child(python, str(folder), inputs, output, child_env(tmp_path))
    _assert_same(load_file(str(output)), expected)


@pytest.mark.parametrize("python", interpreters())
def test_load_by_repo_id_from_offline_hub_cache(saved, tmp_path, python):
    folder, inputs, expected = saved
    cache = make_offline_cache(tmp_path / "hub", "test-org/tiny-harmon", folder)
    output = tmp_path / "out.safetensors"
    _run_child(python, "test-org/tiny-harmon", inputs, output, child_env(tmp_path, cache))
    _assert_same(load_file(str(output)), expected)


def test_package_users_need_no_remote_code(saved):
    from transformers import AutoModel

    import modeling_harmon

    model = AutoModel.from_pretrained(saved[0])
    assert type(model) is modeling_harmon.HarmonForConditionalGeneration
