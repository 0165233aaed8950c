"""Model cards: the Hub metadata of a rendered card, the paper's results only for the released sizes, and every usage
example of the card run as written (in fresh processes, each example in fresh globals) against a tiny model loaded by
repo id from an offline Hub cache."""

import ast
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from harmon_model_cards import MINIMUM_VERSIONS, REPO_PLACEHOLDER, render_model_card, write_model_card
from harmon_pipelines.hub import save_hub_folder

from .hub_utils import child_env, interpreters, make_offline_cache, run_python


REPO_ID = "test-org/tiny-harmon"
REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE_SIZE = (32, 32)

# The paper's Tables 2-4, typed here independently of harmon_model_cards: {(dataset, metric type): value}.
PAPER_RESULTS = {
    896: {
        ("POPE", "pope"): 86.5,
        ("MME", "mme-p"): 1148,
        ("MME", "mme-c"): 260,
        ("MMBench", "mmb"): 59.8,
        ("SEED-Bench", "seed"): 62.5,
        ("GQA", "gqa"): 56.3,
        ("MMMU", "mmmu"): 34.2,
        ("MSCOCO-30K", "fid"): 8.86,
        ("MJHQ-30K", "fid"): 6.08,
        ("GenEval", "overall"): 0.71,
        ("GenEval", "single-object"): 0.99,
        ("GenEval", "two-objects"): 0.80,
        ("GenEval", "counting"): 0.57,
        ("GenEval", "colors"): 0.87,
        ("GenEval", "position"): 0.55,
        ("GenEval", "color-attribution"): 0.48,
    },
    1536: {
        ("POPE", "pope"): 87.6,
        ("MME", "mme-p"): 1155,
        ("MME", "mme-c"): 321,
        ("MMBench", "mmb"): 65.5,
        ("SEED-Bench", "seed"): 67.1,
        ("GQA", "gqa"): 58.9,
        ("MMMU", "mmmu"): 38.9,
        ("MSCOCO-30K", "fid"): 8.39,
        ("MJHQ-30K", "fid"): 5.15,
        ("GenEval", "overall"): 0.76,
        ("GenEval", "single-object"): 0.99,
        ("GenEval", "two-objects"): 0.86,
        ("GenEval", "counting"): 0.66,
        ("GenEval", "colors"): 0.85,
        ("GenEval", "position"): 0.74,
        ("GenEval", "color-attribution"): 0.48,
    },
}
BASE_MODELS = {896: "Qwen/Qwen2.5-0.5B-Instruct", 1536: "Qwen/Qwen2.5-1.5B-Instruct"}

# Each entry point must have an example in the card.
ENTRY_POINTS = [
    'pipeline("text-to-image"',
    'pipeline("image-text-to-text"',
    "DiffusionPipeline.from_pretrained(",
    'custom_pipeline="pipeline_harmon_inpaint"',
    'custom_pipeline="pipeline_harmon_edit"',
    "HarmonPipeline.from_pretrained(",
    "import modeling_harmon",
    ".generate_images(",
    ".apply_chat_template(",
]
# Runs the example files named on its command line in order, each in fresh globals, marking where each one's output
# starts.
RUNNER = (
    "import sys\n"
    "for path in sys.argv[1:]:\n"
    "    print(f'=== {path}', flush=True)\n"
    "    exec(compile(open(path, encoding='utf-8').read(), path, 'exec'), {'__name__': '__main__'})\n"
)
# Put in front of RUNNER for the examples that use remote code: they must work where the pip package is not installed.
NO_PIP_PACKAGE = 'import sys\nsys.modules["modeling_harmon"] = None\nsys.modules["harmon_pipelines"] = None\n'


def _blocks(card_text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", card_text, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model, tokenizer):
    """The tiny model exported with the default card writer (no repo id), then its card re-rendered for REPO_ID."""
    folder = save_hub_folder(tmp_path_factory.mktemp("cards") / "tiny-harmon", tiny_model, tokenizer)
    default_card = (folder / "README.md").read_text(encoding="utf-8")
    write_model_card(folder, repo_id=REPO_ID)
    return folder, default_card


def _faked_size(source: Path, target: Path, hidden_size: int) -> Path:
    """A folder holding only `source`'s config.json with the LLM width of a released size."""
    config = json.loads((source / "config.json").read_text())
    config["text_config"]["hidden_size"] = hidden_size
    target.mkdir()
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_minimum_versions_match_setup_py():
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    requirements = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "INSTALL_REQUIRES"
    )
    lower_bounds = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,.*)?", requirement)
        if match:
            lower_bounds[match[1]] = match[2]
    assert {name: lower_bounds[name] for name in MINIMUM_VERSIONS} == MINIMUM_VERSIONS


def test_tiny_model_card_metadata(exported):
    folder, default_card = exported
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "any-to-any"
    assert data.license == "other"
    assert data.license_name == "s-lab-license-1.0"
    assert data.license_link == "https://github.com/wusize/Harmon/blob/main/LICENSE"
    assert data.tags == ["harmon", "mar", "unified-multimodal", "text-to-image", "image-text-to-text", "custom_code"]
    assert data.base_model is None  # a tiny model derives from no released Qwen2.5
    assert data.eval_results is None and "model-index" not in data.to_dict()
    assert "No evaluation results are reported" in card.text
    for text in (card.content, default_card):
        assert "{{" not in text and "{%" not in text
    assert "\n# tiny-harmon\n" in card.content and "\n# Harmon\n" in default_card  # never the temporary folder name
    # Without a repo id (the default writer of save_hub_folder) the examples name a placeholder, and say so.
    assert f'"{REPO_PLACEHOLDER}"' in default_card and f"Replace `{REPO_PLACEHOLDER}`" in default_card
    assert f'"{REPO_ID}"' in card.text and REPO_PLACEHOLDER not in card.text
    assert "transformers>=5.18" in card.text and "diffusers>=0.40" in card.text and "torch>=2.6" in card.text
    assert 'revision="<commit hash>"' in card.text
    # Written atomically: no temporary file left next to README.md.
    assert not [path.name for path in folder.iterdir() if path.name.startswith(".README.md")]


@pytest.mark.parametrize("hidden_size", [896, 1536])
def test_released_size_gets_base_model_and_paper_results(exported, tmp_path, hidden_size):
    folder = _faked_size(exported[0], tmp_path / "released", hidden_size)
    data = ModelCard.load(write_model_card(folder, repo_id="org/harmon")).data
    assert data.base_model == BASE_MODELS[hidden_size]
    assert data.model_name == "harmon"
    results = {(result.dataset_name, result.metric_type): result.metric_value for result in data.eval_results}
    assert results == PAPER_RESULTS[hidden_size]
    for result in data.eval_results:
        assert result.source_name.startswith("Reported in the Harmon paper (Table ")
        assert result.source_url == "https://arxiv.org/abs/2503.21979"
        assert result.task_type in ("image-text-to-text", "text-to-image")


def test_overrides_replace_computed_metadata(exported, tmp_path):
    folder = _faked_size(exported[0], tmp_path / "released", 896)
    card = render_model_card(folder, repo_id="org/harmon", eval_results=None, base_model="org/other", datasets=["x/y"])
    assert card.data.eval_results is None and card.data.base_model == "org/other" and card.data.datasets == ["x/y"]
    assert "model-index" not in card.content and "| GenEval |" not in card.text
    assert "No evaluation results are listed for this checkpoint." in card.text


def _seed_image(folder: Path) -> None:
    """A local `harmon.png` that is not the tiny model's size: an example that should replace it and does not is
    caught, and an example that reads it before any example wrote one still finds an image."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "harmon.png")


def _run_examples(python: str, snippets: list[str], cwd: Path, env: dict, block_pip_package: bool) -> list[str]:
    """Run `snippets` in card order in one fresh process, each as written in its own fresh globals (as if pasted
    into a new session; they share only imported modules and files such as harmon.png). Returns each one's stdout."""
    cwd.mkdir()
    _seed_image(cwd)
    paths = []
    for index, snippet in enumerate(snippets):
        paths.append(cwd / f"example_{index}.py")
        paths[-1].write_text(snippet, encoding="utf-8")
    script = (NO_PIP_PACKAGE if block_pip_package else "") + RUNNER
    stdout = run_python(python, script, cwd, env, [str(path) for path in paths], timeout=300)
    outputs = re.split(r"^=== .*\n", stdout, flags=re.MULTILINE)[1:]
    assert len(outputs) == len(snippets), stdout
    return outputs


def _run_bash(script: str, cwd: Path, env: dict) -> str:
    cwd.mkdir()
    _seed_image(cwd)
    bin_dir = str(Path(sys.executable).parent)  # the `harmon` console script of this environment
    env = {**env, "PATH": bin_dir + os.pathsep + env.get("PATH", "")}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"bash failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def _check_example(snippet: str, stdout: str) -> None:
    assert stdout.strip(), f"printed nothing:\n{snippet}"
    if 'save("harmon.png")' in snippet:
        assert str(TINY_IMAGE_SIZE) in stdout, (snippet, stdout)
    if "apply_chat_template" in snippet or "image-text-to-text" in snippet:
        assert "answer:" in stdout, (snippet, stdout)
    if "import modeling_harmon" in snippet:  # the pip classes, not remote code
        assert "pip classes: modeling_harmon.modeling_harmon modeling_harmon.processing_harmon" in stdout, stdout


@pytest.mark.parametrize("python", interpreters())
def test_every_card_example_runs_by_repo_id_offline(exported, tmp_path, python):
    """Hub users' examples run where the pip package is not importable; pip users' examples and the `harmon` lines
    run with the package (this interpreter only). The three groups run in parallel, each in one fresh process."""
    folder = exported[0]
    card = (folder / "README.md").read_text(encoding="utf-8")
    snippets = _blocks(card, "python")
    for entry_point in ENTRY_POINTS:
        assert any(entry_point in snippet for snippet in snippets), f"no example uses {entry_point}"
    remote = [snippet for snippet in snippets if "trust_remote_code=True" in snippet]
    pip = [snippet for snippet in snippets if "trust_remote_code=True" not in snippet]
    assert all("harmon_pipelines" in snippet or "modeling_harmon" in snippet for snippet in pip), pip
    cli = "".join(block for block in _blocks(card, "bash") if block.lstrip().startswith("harmon "))
    assert "harmon generate " in cli and "harmon ask " in cli

    cache = make_offline_cache(tmp_path / "hub", REPO_ID, folder)

    def env(name):
        return child_env(tmp_path / name, cache)

    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = {"remote": pool.submit(_run_examples, python, remote, tmp_path / "remote", env("remote"), True)}
        if python == sys.executable:  # other interpreters need not have the pip package
            jobs["pip"] = pool.submit(_run_examples, python, pip, tmp_path / "pip", env("pip"), False)
            jobs["cli"] = pool.submit(_run_bash, cli, tmp_path / "cli", env("cli"))
    failures = [f"--- {name}: {future.exception()}" for name, future in jobs.items() if future.exception()]
    assert not failures, "\n".join(failures)

    for name, examples in (("remote", remote), ("pip", pip if "pip" in jobs else [])):
        for snippet, stdout in zip(examples, jobs[name].result() if examples else []):
            _check_example(snippet, stdout)
    for name in jobs:  # each group's generation examples replaced the seeded image
        with Image.open(tmp_path / name / "harmon.png") as image:
            assert image.size == TINY_IMAGE_SIZE, name
    if "cli" in jobs:
        assert "harmon.png" in jobs["cli"].result()
