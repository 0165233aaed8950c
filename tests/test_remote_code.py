"""Hub remote code: a saved checkpoint loads with `trust_remote_code=True` in a fresh process where the
`modeling_harmon` package cannot be imported, from a folder and by repo id from an offline Hub cache, and gives
the same outputs; so do the repo's second and third diffusers pipelines, `HarmonInpaintPipeline` and
`HarmonImageEditPipeline`, loaded by file name.
`HARMON_REMOTE_PYTHONS` (os.pathsep-separated interpreters, e.g. a venv with the newest transformers) adds more
interpreters to load with.
"""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .hub_utils import child_env, interpreters, make_offline_cache, run_python


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


# ------------------------------------------------------------------- the second diffusers pipeline of a repo
# Hub users load `HarmonInpaintPipeline` by file name (pipeline_harmon_inpaint.py): first without trust_remote_code,
# which must be refused before any of the repo's code runs, then with it; then over an already loaded pipeline.
INPAINT_CHILD = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["modeling_harmon"] = None  # the pip package must not be importable: only the remote code
    sys.modules["harmon_pipelines"] = None
    import numpy as np, torch
    from PIL import Image
    from diffusers import DiffusionPipeline

    source, image_path, mask_path, output = sys.argv[1:5]
    torch.set_num_threads(1)
    image, mask = Image.open(image_path), Image.open(mask_path)
    arguments = dict(image=image, mask_image=mask, num_inference_steps=3)
    seed = lambda: torch.Generator().manual_seed(5)

    try:
        DiffusionPipeline.from_pretrained(source, custom_pipeline="pipeline_harmon_inpaint")
        refused = None
    except ValueError as error:
        refused = str(error)
    modules_cache = os.path.join(os.environ["HF_MODULES_CACHE"], "diffusers_modules")
    copied = [name for _, _, names in os.walk(modules_cache) for name in names if name.endswith(".py")]
    untrusted = {
        "imported": sorted(name for name in sys.modules if name.startswith("diffusers_modules")),
        "copied": [name for name in copied if name != "__init__.py"],  # a repo file, not an empty package marker
    }

    pipe = DiffusionPipeline.from_pretrained(source, custom_pipeline="pipeline_harmon_inpaint", trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    pil = pipe("a blue square", generator=seed(), **arguments).images[0]
    array = pipe("a blue square", generator=seed(), output_type="np", **arguments).images[0]

    # Reusing a loaded text-to-image pipeline's components, as a Hub user without the package would.
    from huggingface_hub import hf_hub_download
    base = DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
    code = os.path.join(source, "pipeline_harmon_inpaint.py")
    code = code if os.path.isdir(source) else hf_hub_download(source, "pipeline_harmon_inpaint.py")
    reused = DiffusionPipeline.from_pipe(base, custom_pipeline=code, trust_remote_code=True, dtype=base.dtype)
    reused.set_progress_bar_config(disable=True)
    again = reused("a blue square", generator=seed(), output_type="np", **arguments).images[0]
    np.savez(output, pil=np.asarray(pil), array=array, reused=again)
    print(json.dumps({
        "refused": refused,
        "untrusted": untrusted,
        "class": type(pipe).__name__,
        "module": type(pipe).__module__,
        "bases": [klass.__name__ for klass in type(pipe).__mro__[1:3]],
        "model_module": type(pipe.model).__module__,
        "reused_class": type(reused).__name__,
        "reused_shares_the_model": reused.model is base.model,
    }))
    """
)


@pytest.fixture(scope="module")
def inpaint_folder(tmp_path_factory, tiny_model, tokenizer):
    """An exported Hub folder, a picture with its mask, and what the pip class draws from them."""
    import numpy as np
    from PIL import Image

    from harmon_pipelines import HarmonInpaintPipeline
    from harmon_pipelines.hub import save_hub_folder

    root = tmp_path_factory.mktemp("inpaint")
    folder = save_hub_folder(root / "tiny-harmon", tiny_model, tokenizer)
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[4:20, 6:26] = (220, 30, 30)
    pixels[20:] = (30, 40, 220)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[0:16, 8:24] = 255  # 16 of the 64 tokens
    image_path, mask_path = root / "picture.png", root / "mask.png"
    Image.fromarray(pixels).save(image_path)
    Image.fromarray(mask).save(mask_path)
    pipe = HarmonInpaintPipeline.from_pretrained(folder)  # the pip class, its components loaded directly
    assert type(pipe) is HarmonInpaintPipeline and type(pipe.model) is type(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    arguments = dict(image=Image.open(image_path), mask_image=Image.open(mask_path), num_inference_steps=3)
    expected = {
        "pil": np.asarray(pipe("a blue square", generator=torch.Generator().manual_seed(5), **arguments).images[0]),
        "array": pipe(
            "a blue square", generator=torch.Generator().manual_seed(5), output_type="np", **arguments
        ).images[0],
    }
    return folder, image_path, mask_path, expected


@pytest.mark.parametrize("by", ["folder", "repo id"])
@pytest.mark.parametrize("python", interpreters())
def test_inpaint_pipeline_loads_as_a_second_custom_pipeline(inpaint_folder, tmp_path, python, by):
    import numpy as np

    folder, image_path, mask_path, expected = inpaint_folder
    source, cache = str(folder), None
    if by == "repo id":
        source, cache = "test-org/tiny-harmon", make_offline_cache(tmp_path / "hub", "test-org/tiny-harmon", folder)
    output = tmp_path / "inpaint.npz"
    arguments = [source, str(image_path), str(mask_path), str(output)]
    stdout = run_python(python, INPAINT_CHILD, tmp_path, child_env(tmp_path, cache), arguments)
    report = json.loads(stdout.strip().splitlines()[-1])
    # Without trust_remote_code diffusers refuses before it copies or imports any file of the repo.
    assert "trust_remote_code=True" in report["refused"], report["refused"]
    assert report["untrusted"] == {"imported": [], "copied": []}
    assert report["class"] == "HarmonInpaintPipeline" and report["bases"] == ["HarmonPipeline", "DiffusionPipeline"]
    assert report["module"].startswith("diffusers_modules."), report["module"]  # the repo's file, not the package
    assert report["model_module"].startswith("diffusers_modules."), report["model_module"]
    assert report["reused_class"] == "HarmonInpaintPipeline" and report["reused_shares_the_model"]
    produced = np.load(output)
    # The same code on the same weights, seed and thread count: the same pixels.
    np.testing.assert_array_equal(produced["pil"], expected["pil"])
    np.testing.assert_array_equal(produced["array"], expected["array"])
    np.testing.assert_array_equal(produced["reused"], expected["array"])


def test_package_users_reuse_a_loaded_pipeline_for_inpainting(tiny_model, tokenizer, tmp_path):
    """`HarmonInpaintPipeline.from_pipe` shares the model without casting it (diffusers' default would make it
    float32), and a saved inpaint pipeline carries its base class's file, which its own file imports."""
    from harmon_pipelines import HarmonInpaintPipeline, HarmonPipeline

    pipe = HarmonPipeline(model=tiny_model, tokenizer=tokenizer)
    inpaint = HarmonInpaintPipeline.from_pipe(pipe)
    assert type(inpaint) is HarmonInpaintPipeline and inpaint.model is tiny_model and tiny_model.dtype == torch.float32
    pipe.save_pretrained(tmp_path / "pipe")
    half = HarmonPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16)
    assert HarmonInpaintPipeline.from_pipe(half).model.dtype == half.model.dtype == torch.bfloat16
    inpaint.save_pretrained(tmp_path / "inpaint")
    index = json.loads((tmp_path / "inpaint" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_harmon_inpaint", "HarmonInpaintPipeline"]
    assert {"pipeline_harmon.py", "pipeline_harmon_inpaint.py"} <= {
        path.name for path in (tmp_path / "inpaint").iterdir()
    }
    assert type(HarmonInpaintPipeline.from_pretrained(tmp_path / "inpaint")) is HarmonInpaintPipeline


# -------------------------------------------------------------------- the third diffusers pipeline of a repo
# `HarmonImageEditPipeline` (pipeline_harmon_edit.py) loads by file name as the inpaint pipeline does; its call passes
# the pictures through the LLM's understanding path, so the remote files must carry that path too.
EDIT_CHILD = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["modeling_harmon"] = None  # the pip package must not be importable: only the remote code
    sys.modules["harmon_pipelines"] = None
    import numpy as np, torch
    from PIL import Image
    from diffusers import DiffusionPipeline

    source, image_path, mask_path, output = sys.argv[1:5]
    torch.set_num_threads(1)
    image, mask = Image.open(image_path), Image.open(mask_path)
    arguments = dict(guidance_scale=2.0, image_guidance_scale=1.5, num_inference_steps=3, num_sampling_steps=2)
    seed = lambda: torch.Generator().manual_seed(5)

    try:
        DiffusionPipeline.from_pretrained(source, custom_pipeline="pipeline_harmon_edit")
        refused = None
    except ValueError as error:
        refused = str(error)
    imported = sorted(name for name in sys.modules if name.startswith("diffusers_modules"))

    pipe = DiffusionPipeline.from_pretrained(source, custom_pipeline="pipeline_harmon_edit", trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    pil = pipe("make the circle blue", image=image, generator=seed(), **arguments).images[0]
    both = pipe("make the circle blue", image=[image, mask.convert("RGB")], generator=seed(), output_type="np",
                **arguments).images[0]
    masked = pipe("make the circle blue", image=image, mask_image=mask, generator=seed(), output_type="np",
                  **arguments).images[0]

    from huggingface_hub import hf_hub_download
    base = DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
    code = os.path.join(source, "pipeline_harmon_edit.py")
    code = code if os.path.isdir(source) else hf_hub_download(source, "pipeline_harmon_edit.py")
    reused = DiffusionPipeline.from_pipe(base, custom_pipeline=code, trust_remote_code=True, dtype=base.dtype)
    reused.set_progress_bar_config(disable=True)
    again = reused("make the circle blue", image=image, generator=seed(), output_type="np", **arguments).images[0]
    np.savez(output, pil=np.asarray(pil), both=both, masked=masked, reused=again)
    print(json.dumps({
        "refused": refused,
        "imported_untrusted": imported,
        "class": type(pipe).__name__,
        "module": type(pipe).__module__,
        "bases": [klass.__name__ for klass in type(pipe).__mro__[1:3]],
        "model_module": type(pipe.model).__module__,
        "reused_class": type(reused).__name__,
        "reused_shares_the_model": reused.model is base.model,
    }))
    """
)


@pytest.fixture(scope="module")
def edit_expected(inpaint_folder):
    """What the pip `HarmonImageEditPipeline` draws from the exported folder of `inpaint_folder` and its pictures."""
    import numpy as np
    from PIL import Image

    from harmon_pipelines import HarmonImageEditPipeline

    folder, image_path, mask_path, _ = inpaint_folder
    pipe = HarmonImageEditPipeline.from_pretrained(folder)
    assert type(pipe) is HarmonImageEditPipeline
    pipe.set_progress_bar_config(disable=True)
    image, mask = Image.open(image_path), Image.open(mask_path)
    arguments = dict(guidance_scale=2.0, image_guidance_scale=1.5, num_inference_steps=3, num_sampling_steps=2)

    def draw(**inputs):
        generator = torch.Generator().manual_seed(5)
        return pipe("make the circle blue", generator=generator, **arguments, **inputs).images[0]

    return {
        "pil": np.asarray(draw(image=image)),
        "both": draw(image=[image, mask.convert("RGB")], output_type="np"),
        "masked": draw(image=image, mask_image=mask, output_type="np"),
        "reused": draw(image=image, output_type="np"),
    }


@pytest.mark.parametrize("by", ["folder", "repo id"])
@pytest.mark.parametrize("python", interpreters())
def test_edit_pipeline_loads_as_a_third_custom_pipeline(inpaint_folder, edit_expected, tmp_path, python, by):
    import numpy as np

    folder, image_path, mask_path, _ = inpaint_folder
    source, cache = str(folder), None
    if by == "repo id":
        source, cache = "test-org/tiny-harmon", make_offline_cache(tmp_path / "hub", "test-org/tiny-harmon", folder)
    output = tmp_path / "edit.npz"
    arguments = [source, str(image_path), str(mask_path), str(output)]
    stdout = run_python(python, EDIT_CHILD, tmp_path, child_env(tmp_path, cache), arguments)
    report = json.loads(stdout.strip().splitlines()[-1])
    assert "trust_remote_code=True" in report["refused"] and report["imported_untrusted"] == [], report
    assert report["class"] == "HarmonImageEditPipeline" and report["bases"] == ["HarmonPipeline", "DiffusionPipeline"]
    assert report["module"].startswith("diffusers_modules."), report["module"]
    assert report["model_module"].startswith("diffusers_modules."), report["model_module"]
    assert report["reused_class"] == "HarmonImageEditPipeline" and report["reused_shares_the_model"]
    produced = np.load(output)
    for name, expected in edit_expected.items():  # the same code, weights, seed and thread count: the same pixels
        np.testing.assert_array_equal(produced[name], expected, err_msg=name)
