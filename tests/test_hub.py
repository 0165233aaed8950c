"""The exported Hub folder (docs/adr-0001-hub-repo-layout.md): every entry point loads it from a folder and by
repo id from an offline Hub cache, in fresh processes, with remote code only (pip package blocked) and with the pip
package only (no trust_remote_code), and gives the same outputs as the in-process model. `harmon push` is tested at
the `HfApi` boundary."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmon_pipelines import HarmonPipeline, HarmonTextToImagePipeline
from harmon_pipelines.hub import (
    check_hub_folder,
    complete_hub_folder,
    is_compact_folder,
    push_hub_folder,
    save_hub_folder,
)
from modeling_harmon import HarmonProcessor
from modeling_harmon.output_folders import MARKER

from .hub_utils import child_env, interpreters, make_offline_cache, run_python


REPO_ID = "test-org/tiny-harmon"
QUESTION = "what color is the circle?"

# Loads every door with remote code only and writes what each produced.
REMOTE_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_harmon"] = None  # the pip package must not be importable: only the remote code
    sys.modules["harmon_pipelines"] = None
    import numpy as np, torch
    from PIL import Image
    from diffusers import DiffusionPipeline
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    source, image_path, output = sys.argv[1:4]
    torch.set_num_threads(1)
    remote = lambda obj: type(obj).__module__.split(".")[0]
    image = Image.open(image_path)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "QUESTION"}]}]

    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    assert type(AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=True)) is type(model)
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    answer = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:]

    vqa = pipeline("image-text-to-text", model=source, trust_remote_code=True)
    vqa_text = vqa(text=messages, max_new_tokens=4, generate_kwargs={"do_sample": False}, return_full_text=False)
    t2i = pipeline("text-to-image", model=source, trust_remote_code=True)
    t2i_image = t2i("a red circle", num_iter=3, generator=torch.Generator().manual_seed(7))[0]
    diffusers_pipe = DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
    diffusers_pipe.set_progress_bar_config(disable=True)
    diffusers_image = diffusers_pipe(
        "a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="np"
    ).images[0]
    np.savez(
        output, answer=answer.numpy(), t2i=np.asarray(t2i_image), diffusers=diffusers_image,
        input_ids=inputs["input_ids"].numpy(), pixel_values=inputs["pixel_values"].numpy(),
    )
    print(json.dumps({
        "modules": [remote(model), remote(processor), remote(vqa.model), remote(vqa.processor), remote(t2i), remote(diffusers_pipe),
                    remote(diffusers_pipe.model)],
        "vqa_text": vqa_text[0]["generated_text"],
    }))
    """
).replace("QUESTION", QUESTION)

# pip users: the package's own classes, no trust_remote_code anywhere.
PIP_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    import harmon_pipelines
    import modeling_harmon

    source, output = sys.argv[1:3]
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(source)
    processor = AutoProcessor.from_pretrained(source)
    pipe = harmon_pipelines.HarmonPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="np")
    np.savez(output, diffusers=image.images[0])
    print(json.dumps({
        "model": type(model) is modeling_harmon.HarmonForConditionalGeneration,
        "processor": type(processor) is modeling_harmon.HarmonProcessor,
        "pipeline": type(pipe) is harmon_pipelines.HarmonPipeline,
        "pipeline_model": type(pipe.model) is modeling_harmon.HarmonForConditionalGeneration,
    }))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model, tokenizer):
    root = tmp_path_factory.mktemp("hub")
    folder = save_hub_folder(root / "tiny-harmon", tiny_model, tokenizer)
    image_path = root / "circle.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(image_path)
    return folder, image_path


@pytest.fixture(scope="module")
def expected(exported, tiny_model, tokenizer):
    """What the in-process pip objects give for the child scripts' inputs."""
    folder, image_path = exported
    processor = HarmonProcessor.from_model_config(tiny_model.config, tokenizer)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": Image.open(image_path)}, {"type": "text", "text": QUESTION}],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    answer = tiny_model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    t2i = HarmonTextToImagePipeline(model=tiny_model, tokenizer=tokenizer)
    pipe = HarmonPipeline(model=tiny_model, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return {
        "input_ids": inputs["input_ids"].numpy(),
        "pixel_values": inputs["pixel_values"].numpy(),
        "answer": answer.numpy(),
        "vqa_text": processor.decode(answer, skip_special_tokens=True),
        "t2i": np.asarray(t2i("a red circle", num_iter=3, generator=torch.Generator().manual_seed(7))[0]),
        "diffusers": pipe(
            "a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="np"
        ).images[0],
    }


def test_layout(exported):
    folder, _ = exported
    assert check_hub_folder(folder) == []
    names = {path.name for path in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "model_index.json",
        "README.md",
        "pipeline_harmon.py",
        "pipeline_harmon_inpaint.py",  # the second diffusers pipeline, loaded by file name (custom_pipeline=)
        "pipeline_harmon_edit.py",  # the third one (instruction editing), loaded the same way
        "pipeline_text_to_image_harmon.py",
        "processing_harmon.py",
        "image_processing_harmon.py",
        "modeling_harmon.py",
        "configuration_harmon.py",
        "model",
        "tokenizer",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    assert config["custom_pipelines"]["text-to-image"] == {
        "impl": "pipeline_text_to_image_harmon.HarmonTextToImagePipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_harmon.HarmonProcessor"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_harmon", "HarmonPipeline"]
    assert index["model"] == ["modeling_harmon", "HarmonForConditionalGeneration"]
    assert set(index) == {"_class_name", "_diffusers_version", "model", "tokenizer"}  # no second VAE copy
    # The inpaint and edit pipelines' files import their base's sibling file, which diffusers fetches from the same
    # repo.
    for name in ("pipeline_harmon_inpaint.py", "pipeline_harmon_edit.py"):
        assert "from .pipeline_harmon import HarmonPipeline" in (folder / name).read_text(), name
    # The component folders hold the root's bytes, so the Hub and the cache store them once.
    for component in ("model", "tokenizer"):
        for path in (folder / component).iterdir():
            assert (folder / path.name).read_bytes() == path.read_bytes(), f"{component}/{path.name}"
    assert (folder / "model" / "model.safetensors").is_file() and (folder / "tokenizer" / "tokenizer.json").is_file()
    # Every uploaded file is flat and imports nothing from the pip packages.
    for path in folder.rglob("*.py"):
        assert not _absolute_imports(path) & {"modeling_harmon", "harmon_pipelines", "harmon_training"}, path


def _absolute_imports(path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_check_hub_folder_finds_problems(exported, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(exported[0], folder)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "pipeline_harmon.py").unlink()
    (folder / "pipeline_harmon_inpaint.py").unlink()
    (folder / "pipeline_harmon_edit.py").unlink()
    problems = check_hub_folder(folder)
    assert "missing pipeline_harmon.py" in problems
    assert "missing pipeline_harmon_inpaint.py" in problems
    assert "missing pipeline_harmon_edit.py" in problems
    assert "model/config.json differs from the root config.json" in problems


def _check_remote(stdout: str, output, expected: dict) -> None:
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["modules"][:5] == ["transformers_modules"] * 5, report["modules"]
    assert report["modules"][5:] == ["diffusers_modules"] * 2, report["modules"]
    produced = np.load(output)
    np.testing.assert_array_equal(produced["input_ids"], expected["input_ids"])
    np.testing.assert_allclose(produced["pixel_values"], expected["pixel_values"], atol=1e-6)
    np.testing.assert_array_equal(produced["answer"], expected["answer"])
    assert report["vqa_text"] == expected["vqa_text"]
    assert np.abs(produced["t2i"].astype(int) - expected["t2i"].astype(int)).max() <= 1
    np.testing.assert_allclose(produced["diffusers"], expected["diffusers"], atol=1e-4)


@pytest.mark.parametrize("python", interpreters())
def test_every_entry_point_from_folder_with_remote_code(exported, expected, tmp_path, python):
    folder, image_path = exported
    output = tmp_path / "out.npz"
    stdout = run_python(
        python, REMOTE_CHILD, tmp_path, child_env(tmp_path), [str(folder), str(image_path), str(output)]
    )
    _check_remote(stdout, output, expected)


@pytest.mark.parametrize("python", interpreters())
def test_every_entry_point_by_repo_id_offline(exported, expected, tmp_path, python):
    folder, image_path = exported
    cache = make_offline_cache(tmp_path / "hub", REPO_ID, folder)
    output = tmp_path / "out.npz"
    stdout = run_python(
        python, REMOTE_CHILD, tmp_path, child_env(tmp_path, cache), [REPO_ID, str(image_path), str(output)]
    )
    _check_remote(stdout, output, expected)


def test_pip_users_by_repo_id_offline(exported, expected, tmp_path):
    import sys

    cache = make_offline_cache(tmp_path / "hub", REPO_ID, exported[0])
    output = tmp_path / "pip.npz"
    stdout = run_python(sys.executable, PIP_CHILD, tmp_path, child_env(tmp_path, cache), [REPO_ID, str(output)])
    assert json.loads(stdout.strip().splitlines()[-1]) == {
        "model": True,
        "processor": True,
        "pipeline": True,
        "pipeline_model": True,
    }
    np.testing.assert_allclose(np.load(output)["diffusers"], expected["diffusers"], atol=1e-4)


class RecordingApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls instead of talking to the Hub."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "commit-info"


class SnapshotApi(RecordingApi):
    """Also records what the uploaded folder held (it is a temporary copy, gone after the call)."""

    def upload_folder(self, **kwargs):
        root = Path(kwargs["folder_path"])
        kwargs["files"] = {
            str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
        }
        return super().upload_folder(**kwargs)


def _tree(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in Path(folder).rglob("*") if path.is_file()}


def test_push_calls_hfapi(exported, tmp_path):
    import shutil

    folder = shutil.copytree(exported[0], tmp_path / "tiny-harmon")
    torch.save({"not": "published"}, folder / "training_args.bin")  # a training folder's pickle
    before = _tree(folder)
    api = SnapshotApi()
    result = push_hub_folder(folder, "me/harmon-tiny", private=True, revision="v1", api=api)
    assert result == "commit-info"
    assert [name for name, _ in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "me/harmon-tiny", "private": True, "exist_ok": True, "repo_type": "model"}
    assert api.calls[1][1] == {"repo_id": "me/harmon-tiny", "branch": "v1", "exist_ok": True}
    upload = api.calls[2][1]
    assert "me/harmon-tiny" in upload["files"]["README.md"].decode()  # the card's snippets name the real repo
    assert _tree(folder) == before  # the folder itself is never edited
    assert "training_args.bin" not in upload["files"] and "*.bin" in upload["ignore_patterns"]
    assert {name: data for name, data in upload["files"].items() if name != "README.md"} == {
        name: data for name, data in before.items() if name not in ("README.md", "training_args.bin", MARKER)
    }
    assert (
        upload["folder_path"] != str(folder) and upload["revision"] == "v1" and upload["repo_id"] == "me/harmon-tiny"
    )


@pytest.mark.parametrize("repo_id", ["not a repo", "me/", "x" * 200 + "/y", "me/harmon--tiny..", "harmon-tiny", ""])
def test_push_validates_the_repo_id_before_touching_anything(exported, tmp_path, repo_id):
    import shutil

    folder = shutil.copytree(exported[0], tmp_path / "tiny-harmon")
    before = _tree(folder)
    api = RecordingApi()
    with pytest.raises(ValueError, match="repo_id"):
        push_hub_folder(folder, repo_id, api=api)
    assert api.calls == [] and _tree(folder) == before


def test_push_refuses_incomplete_folder(tmp_path):
    api = RecordingApi()
    with pytest.raises(ValueError, match="not a complete Harmon Hub folder"):
        push_hub_folder(tmp_path, "me/harmon-tiny", api=api)
    with pytest.raises(ValueError, match="folder"):
        push_hub_folder(tmp_path / "nope", "me/harmon-tiny", api=api)
    assert api.calls == []


def _compact_copy(folder, target):
    """`folder` without the parts of the layout that are derived from the model: the shape in which the embedded
    Shapes model ships (as `training.shapes.export_default` prunes it)."""
    import shutil

    shutil.copytree(folder, target)
    for path in list(target.glob("*.py")) + [target / "model_index.json"]:
        path.unlink()
    for component in ("model", "tokenizer"):
        shutil.rmtree(target / component)
    return target


def _files(folder) -> dict:
    """The folder's files, without harmon's output marker (each writer marks its own folder)."""
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file() and path.name != MARKER}


def test_compact_folder_is_completed_and_every_entry_point_works(exported, expected, tmp_path):
    folder, image_path = exported
    compact = _compact_copy(folder, tmp_path / "compact")
    assert is_compact_folder(compact) and not is_compact_folder(folder)
    before = _files(compact)
    completed = complete_hub_folder(compact, tmp_path / "completed")
    assert check_hub_folder(completed) == []
    assert _files(compact) == before  # the compact folder is not touched
    after = _files(completed)
    assert {name: after[name] for name in before} == before  # its files are kept byte for byte, the card included
    assert set(after) - set(before) == set(_files(folder)) - set(before)
    output = tmp_path / "out.npz"
    arguments = [str(completed), str(image_path), str(output)]
    stdout = run_python(interpreters()[0], REMOTE_CHILD, tmp_path, child_env(tmp_path), arguments)
    _check_remote(stdout, output, expected)


def test_push_completes_a_compact_folder_in_a_temporary_copy(exported, tmp_path):
    compact = _compact_copy(exported[0], tmp_path / "compact")
    before = _files(compact)

    class CheckingApi(RecordingApi):
        def upload_folder(self, **kwargs):
            kwargs["problems"] = check_hub_folder(kwargs["folder_path"])  # what the Hub receives is complete
            return super().upload_folder(**kwargs)

    api = CheckingApi()
    assert push_hub_folder(compact, "me/harmon-tiny", api=api) == "commit-info"
    upload = api.calls[-1][1]
    assert upload["problems"] == [] and upload["folder_path"] != str(compact)
    assert _files(compact) == before


def test_the_embedded_model_is_a_compact_folder():
    """`harmon push` can publish the packaged Shapes model (its card tells users to)."""
    from harmon_pipelines.default_model import DEFAULT_MODEL_DIR

    assert is_compact_folder(DEFAULT_MODEL_DIR), check_hub_folder(DEFAULT_MODEL_DIR)


def test_push_completes_a_folder_exported_before_the_edit_pipeline(exported, tmp_path):
    """A folder of an older export lacks the newer pipeline files; they are derived data, so push writes them in
    its temporary copy (the folder itself is left as it is)."""
    import shutil

    folder = shutil.copytree(exported[0], tmp_path / "older")
    (folder / "pipeline_harmon_edit.py").unlink()
    api = SnapshotApi()
    assert push_hub_folder(folder, "me/harmon-tiny", api=api) == "commit-info"
    assert "pipeline_harmon_edit.py" in api.calls[-1][1]["files"]
    assert not (folder / "pipeline_harmon_edit.py").exists()


def test_complete_refuses_what_is_not_compact(exported, tmp_path):
    import shutil

    with pytest.raises(ValueError, match="not a compact Harmon folder.*nothing is missing"):
        complete_hub_folder(exported[0], tmp_path / "out")
    broken = _compact_copy(exported[0], tmp_path / "broken")
    (broken / "model.safetensors").unlink()  # no weights: nothing to complete from
    assert not is_compact_folder(broken)
    with pytest.raises(ValueError, match="not a complete Harmon Hub folder"):
        push_hub_folder(broken, "me/harmon-tiny", api=RecordingApi())
    differs = tmp_path / "differs"
    shutil.copytree(exported[0], differs)
    (differs / "model" / "config.json").write_text("{}")
    (differs / "pipeline_harmon.py").unlink()
    assert not is_compact_folder(differs)  # a component that disagrees with the root is not derived data to redo
    assert not (tmp_path / "out").exists()


def test_offline_load_option_is_not_saved(tmp_path, tiny_model, tokenizer):
    """transformers records `local_files_only=True` on a tokenizer loaded under HF_HUB_OFFLINE=1; the exported files
    must not depend on whether the export ran offline."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert loaded.init_kwargs.get("local_files_only") is True  # the premise: this suite runs offline
    folder = save_hub_folder(tmp_path / "repo", tiny_model, loaded)
    for path in (folder / "tokenizer_config.json", folder / "tokenizer" / "tokenizer_config.json"):
        assert "local_files_only" not in json.loads(path.read_text()), path
