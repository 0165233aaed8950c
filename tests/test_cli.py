"""The `harmon` command: files, metadata and seeds of `generate`, batch mode under torchrun and its resume, `ask`,
`convert`, `push` (at the HfApi boundary) and one-line errors.

Every process start costs seconds of imports, so most calls run `main()` in this process; subprocesses cover the
installed script, torchrun and a real process's error output.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

from harmon_pipelines import HarmonPipeline, default_model
from harmon_pipelines.cli import main
from harmon_pipelines.default_model import DEFAULT_MODEL_DIR
from harmon_pipelines.hub import PUSH_IGNORE_PATTERNS, check_hub_folder
from modeling_harmon import HarmonProcessor
from modeling_harmon.atomic_files import write_png
from modeling_harmon.demo import answer


REPO = Path(__file__).resolve().parents[1]
VECTOR_SET = Path(os.environ.get("HARMON_REF_VECTORS", REPO.parent / "shared" / "ref_vectors" / "tiny_a"))
FAST = ["--steps", "2", "--head-steps", "2"]
HARMON_SCRIPT = Path(sys.executable).with_name("harmon")


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `harmon` console script (or the module, where the script is not on disk)."""
    command = [str(HARMON_SCRIPT)] if HARMON_SCRIPT.is_file() else [sys.executable, "-m", "harmon_pipelines.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=300)


def call(capsys, *argv) -> tuple[int, str, str]:
    """`harmon *argv` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(item) for item in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    """stderr without the random-model note and progress bars."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if not line.startswith("NOTE:") and "it/s]" not in line]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def talker(tmp_path_factory, tiny):
    """(model, tokenizer, folder): a copy of the tiny model whose LLM layers are scaled up, saved as a plain
    `save_pretrained` folder. A small random LLM with tied embeddings mostly repeats the prompt's last token (a
    newline, which the command strips); scaled, its greedy answer is visible text."""
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in model.model.language_model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                parameter.mul_(20)
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def _default_model_setting(name: str, fallback: float) -> float:
    """A setting the packaged model's generation config stores (`fallback`: the random fallback model's)."""
    if not DEFAULT_MODEL_DIR.is_dir():
        return fallback
    return json.loads((DEFAULT_MODEL_DIR / "generation_config.json").read_text())["image_generation"].get(
        name, fallback
    )


def test_generate_writes_pngs_with_metadata_and_reproducible_seeds(tmp_path, capsys):
    result = run_script(
        "generate", "a red circle", "-o", "out.png", "--seed", "5", "-n", "2", "--size", "16x24", *FAST, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["out_0.png", "out_1.png"]
    # the random-model note exactly when no trained default model is packaged, and the MAR progress bar
    iterations = 2 * _default_model_setting("candidates", 1)  # --steps 2, for each of the model's drawings
    assert ("RANDOMLY INITIALISED" in result.stderr) == (not DEFAULT_MODEL_DIR.is_dir())
    assert f"{iterations}/{iterations}" in result.stderr
    for k in range(2):
        image = Image.open(tmp_path / f"out_{k}.png")
        assert image.size == (24, 16)  # (width, height) for --size HxW = 16x24
        metadata = json.loads(image.text["harmon"])
        assert image.text["prompt"] == metadata["prompt"] == "a red circle"
        assert metadata["seed"] == 5 + k
        assert metadata["model"] == (
            str(DEFAULT_MODEL_DIR) if DEFAULT_MODEL_DIR.is_dir() else default_model.RANDOM_MODEL_NAME
        )
        assert metadata["settings"] == {
            "height": 16,
            "width": 24,
            "num_inference_steps": 2,
            "num_sampling_steps": 2,
            "guidance_scale": _default_model_setting("guidance_scale", 3.0),
            "cfg_schedule": "constant",
            "temperature": _default_model_setting("temperature", 1.0),
            "candidates": _default_model_setting("candidates", 1),
        }
    assert np.abs(pixels(tmp_path / "out_0.png") - pixels(tmp_path / "out_1.png")).max() > 0

    # Same seed, another process: the same files, byte for byte.
    code, out, _ = call(
        capsys,
        "generate",
        "a red circle",
        "-o",
        tmp_path / "again.png",
        "--seed",
        "5",
        "-n",
        "2",
        "--size",
        "16x24",
        *FAST,
    )
    assert code == 0
    for k in range(2):
        assert (tmp_path / f"again_{k}.png").read_bytes() == (tmp_path / f"out_{k}.png").read_bytes()
    # Seed rule: image k of seed s is the image of seed s + k (a single image keeps the plain name).
    code, out, _ = call(
        capsys, "generate", "a red circle", "-o", tmp_path / "six.png", "--seed", "6", "--size", "16x24", *FAST
    )
    assert code == 0 and out.split() == [str(tmp_path / "six.png")]
    # Equal up to float rounding of batched products (batch of 2 vs 1): at most one grey level.
    assert np.abs(pixels(tmp_path / "six.png") - pixels(tmp_path / "out_1.png")).max() <= 1


@pytest.mark.parametrize("command", [[], ["generate"], ["ask"], ["convert"], ["push"]])
def test_help(command, capsys):
    code, out, _ = call(capsys, *command, "--help")
    assert code == 0 and out.startswith(f"usage: {' '.join(['harmon', *command])}")


def test_bad_arguments_fail_with_one_line(tmp_path, capsys):
    (tmp_path / "not_an_image.png").write_text("hello")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a red circle"}\n\n{"prompt": "a cat", "seed": -1}\n')
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"llm.model.norm.weight": torch.ones(2)}}, wrapped)
    out_png = str(tmp_path / "out.png")
    cases = [
        (["generate", "x", "-o", out_png, "--size", "30x32"], "--size 30x32: height must be a positive multiple of 4"),
        (["generate", "x", "-o", out_png, "--size", "big"], "argument --size: size must be HxW or N"),
        (["generate", "x", "-o", out_png, "--steps", "0"], "--steps 0: num_iter must be an integer in [1, 64]"),
        (["generate", "x", "-o", out_png, "-n", "0"], "argument -n/--num-images: must be an integer >= 1, got '0'"),
        (["generate", "x", "-o", str(tmp_path / "out.jpg")], "-o/--output must name a .png file"),
        (["generate", "--prompts", tmp_path / "bad.jsonl", "--outdir", tmp_path], 'bad.jsonl line 3: "seed" must be'),
        (["ask", tmp_path / "missing.png", "what?"], "missing.png': no such file"),
        (["ask", tmp_path / "not_an_image.png", "what?"], "is not an image PIL can read"),
        (
            [
                "convert",
                "--harmon-ckpt",
                wrapped,
                "--tokenizer",
                "t",
                "--llm-config",
                "l",
                "--mar-config",
                "m",
                "--output",
                tmp_path / "converted",
            ],
            "wrapped",
        ),
        (["push", tmp_path / "nowhere", "--repo-id", "org/name"], "nowhere' (not a directory)"),
        (["push", tmp_path], "the following arguments are required: --repo-id"),
        (["generate", "x", "-o", out_png, "--model", tmp_path], f"--model {str(tmp_path)!r}: cannot load it as"),
    ]
    for argv, expected in cases:
        code, _, err = call(capsys, *argv)
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1, (argv, err)
        assert lines[0].startswith(f"harmon {argv[0]}: error: ") and expected in lines[0], (argv, lines[0])
    assert not (tmp_path / "converted").exists()

    # A real process too: exit status 2, one line, no traceback.
    result = run_script("ask", "missing.png", "what?", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "harmon ask: error: IMAGE 'missing.png': no such file\n"


def test_jsonl_errors_name_the_line(tmp_path, capsys):
    cases = [
        ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2: not valid JSON"),
        ('["a red circle"]\n', "line 1: expected a JSON object"),
        ('{"prompt": ""}\n', 'line 1: "prompt" must be a non-empty string'),
        ('{"prompt": "a", "steps": 2, "colour": "red"}\n', "line 1: unknown keys ['colour']"),
        ('\n{"prompt": "a", "size": "30"}\n', 'line 2: "size" 30x30: height must be a positive multiple of 4'),
        ('{"prompt": "a", "size": "small"}\n', "line 1: size must be HxW or N"),
        ('{"prompt": "a", "cfg": 0.5}\n', 'line 1: "cfg" 0.5: guidance_scale must be a finite number >= 1'),
        ("\n\n", "holds no prompts"),
    ]
    for text, expected in cases:
        path = tmp_path / "prompts.jsonl"
        path.write_text(text)
        code, _, err = call(capsys, "generate", "--prompts", path, "--outdir", tmp_path / "out")
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and expected in lines[0], (text, err)
    assert not (tmp_path / "out").exists()  # validated before anything is written


def test_batch_mode_shards_over_torchrun_and_resumes(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a red circle"}\n'
        '{"prompt": "a blue square", "seed": 7}\n'
        "\n"
        '{"prompt": "two cats", "size": "16x24"}\n'
        '{"prompt": "a dog"}\n'
        '{"prompt": "a tree", "steps": 3}\n'
    )
    options = ["--prompts", prompts, "-n", "2", "--batch-size", "2", *FAST]
    code, _, err = call(capsys, "generate", *options, "--outdir", tmp_path / "single")
    assert code == 0, err
    expected = {f"{line:05d}_{k}.{ext}" for line in (1, 2, 4, 5, 6) for k in range(2) for ext in ("png", "json")}
    assert {path.name for path in (tmp_path / "single").iterdir()} == expected

    record = json.loads((tmp_path / "single" / "00002_1.json").read_text())
    assert record["prompt"] == "a blue square" and record["seed"] == 8 and (record["line"], record["image"]) == (2, 1)
    assert json.loads(Image.open(tmp_path / "single" / "00002_1.png").text["harmon"]) == {
        key: value for key, value in record.items() if key not in ("line", "image")
    }
    assert json.loads((tmp_path / "single" / "00004_0.json").read_text())["settings"]["width"] == 24
    assert json.loads((tmp_path / "single" / "00006_0.json").read_text())["settings"]["num_inference_steps"] == 3
    assert Image.open(tmp_path / "single" / "00004_0.png").size == (24, 16)

    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "harmon_pipelines.cli"]
    result = subprocess.run(
        [*launch, "generate", *map(str, options), "--outdir", str(tmp_path / "dist")],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [line for line in result.stderr.splitlines() if ": wrote " in line]
    assert sorted(line.split(":")[0] for line in written) == ["rank 0/2", "rank 1/2"]
    assert sum(int(line.split("wrote ")[1].split()[0]) for line in written) == 10  # every image exactly once
    assert {path.name for path in (tmp_path / "dist").iterdir()} == expected
    for name in expected:
        assert (tmp_path / "dist" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name

    # Resume: a missing PNG and a PNG without its JSON are redrawn (identically); nothing else is touched.
    single = tmp_path / "single"
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in single.iterdir()}
    (single / "00002_1.png").unlink()
    (single / "00005_0.json").unlink()
    code, _, err = call(capsys, "generate", *options, "--outdir", single)
    assert code == 0 and "8 already written, 2 to draw" in err
    after = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in single.iterdir()}
    assert set(after) == expected
    rewritten = {"00002_1.png", "00002_1.json", "00005_0.png", "00005_0.json"}
    assert {name for name in expected if after[name][0] != before[name][0]} == rewritten
    assert all(after[name][1] == before[name][1] for name in expected)
    code, _, err = call(capsys, "generate", *options, "--outdir", single)
    assert code == 0 and "10 already written, 0 to draw" in err


def test_ask_prints_the_greedy_answer(tmp_path, capsys, talker, monkeypatch):
    model, tokenizer, model_folder = talker
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8))
    image.save(tmp_path / "photo.png")
    question = "What is in the picture?"
    pixel_values = HarmonProcessor.from_model_config(model.config, tokenizer).image_processor(
        image, return_tensors="pt"
    )["pixel_values"]
    expected = answer(model, tokenizer, pixel_values[0], question, max_new_tokens=6).strip()
    assert expected  # the reference prompt format path, for comparison

    code, out, err = call(
        capsys, "ask", tmp_path / "photo.png", question, "--model", model_folder, "--max-new-tokens", "6"
    )
    assert code == 0, err
    assert out == expected + "\n" and "NOTE" not in err

    # Without --model: the packaged default model when there is one, else the random one (with a note).
    code, out, err = call(
        capsys, "ask", tmp_path / "photo.png", question, "--max-new-tokens", "2", "--dtype", "bfloat16"
    )
    assert code == 0 and ("RANDOMLY INITIALISED" in err) == (not DEFAULT_MODEL_DIR.is_dir())
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", model_folder)
    code, out, err = call(capsys, "ask", tmp_path / "photo.png", question, "--max-new-tokens", "6")
    assert code == 0 and out == expected + "\n" and "NOTE" not in err


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """`harmon convert` of the tiny reference checkpoint of tests/test_converter.py."""
    if not VECTOR_SET.is_dir():
        pytest.skip(f"vector set {VECTOR_SET} not found")
    output = tmp_path_factory.mktemp("convert") / "harmon-tiny"
    code = main(
        [
            "convert",
            "--harmon-ckpt",
            str(VECTOR_SET / "harmon_tiny.pth"),
            "--vae-ckpt",
            str(VECTOR_SET / "kl16_tiny.ckpt"),
            "--tokenizer",
            str(VECTOR_SET / "llm_hf"),
            "--llm-config",
            str(VECTOR_SET / "llm_hf"),
            "--mar-config",
            str(VECTOR_SET / "config.json"),
            "--output",
            str(output),
            "--image-size",
            "128",
        ]
    )
    assert code == 0
    return output


def test_convert_writes_a_hub_folder(converted):
    assert check_hub_folder(converted) == []
    # --image-size: the default size of generation and of the exported processor
    generation = json.loads((converted / "generation_config.json").read_text())
    image_generation = generation["image_generation"]
    assert (image_generation["height"], image_generation["width"]) == (128, 128)
    # A named fast preset (half the iterations and head steps); the default stays the reference's sampling.
    assert generation["image_generation_presets"] == {"fast": {"num_iter": 32, "num_sampling_steps": 50}}
    assert (image_generation["num_iter"], image_generation["guidance_scale"]) == (64, 3.0)
    processor_config = json.loads((converted / "processor_config.json").read_text())
    assert processor_config["image_processor"]["size"] == {"height": 128, "width": 128}
    assert json.loads((converted / "config.json").read_text())["model_type"] == "harmon"
    assert (converted / "README.md").read_text().strip()


def test_converted_folder_loads_as_a_diffusers_pipeline(converted):
    pipe = HarmonPipeline.from_pretrained(converted)
    assert pipe.model.config.model_type == "harmon"


def test_push_uploads_through_the_hub_api(converted, capsys, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", {"token": token}))

        def __getattr__(self, name):
            def record(**kwargs):
                calls.append((name, kwargs))
                return type("CommitInfo", (), {"commit_url": "https://huggingface.co/org/name/commit/abc"})()

            return record

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    code, out, err = call(
        capsys, "push", converted, "--repo-id", "org/name", "--private", "--revision", "dev", "--token", "hf_secret"
    )
    assert code == 0, err
    assert out == "https://huggingface.co/org/name/commit/abc\n"
    upload = calls[-1][1]
    assert Path(upload.pop("folder_path")).name == Path(converted).name  # a temporary copy: the folder is not edited
    assert calls == [
        ("init", {"token": "hf_secret"}),
        ("create_repo", {"repo_id": "org/name", "private": True, "exist_ok": True, "repo_type": "model"}),
        ("create_branch", {"repo_id": "org/name", "branch": "dev", "exist_ok": True}),
        (
            "upload_folder",
            {
                "repo_id": "org/name",
                "revision": "dev",
                "commit_message": "Upload Harmon checkpoint",
                "repo_type": "model",
                "ignore_patterns": PUSH_IGNORE_PATTERNS,
            },
        ),
    ]


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "image.png"
    write_png(Image.new("RGB", (4, 4), "red"), path, {"prompt": "red"})
    with pytest.raises(OSError):
        write_png(Image.new("CMYK", (4, 4)), path)  # PNG cannot store CMYK: the save fails midway
    assert [item.name for item in tmp_path.iterdir()] == ["image.png"]
    assert Image.open(path).text == {"prompt": "red"} and Image.open(path).getpixel((0, 0)) == (255, 0, 0)


def test_generate_uses_a_named_preset_of_the_model(tmp_path, capsys):
    """The embedded model's "fast" preset: fewer head steps and drawings, recorded in the image's metadata; flags
    still win."""
    output = tmp_path / "fast.png"
    assert main(["generate", "a red circle", "-o", str(output), "--sampling", "fast"]) == 0
    settings = json.loads(Image.open(output).text["harmon"])["settings"]
    assert (settings["num_sampling_steps"], settings["candidates"]) == (25, 2)
    assert settings["num_inference_steps"] == _default_model_setting("num_iter", 0)
    assert main(["generate", "a red circle", "-o", str(output), "--preset", "fast", "--head-steps", "20"]) == 0
    assert json.loads(Image.open(output).text["harmon"])["settings"]["num_sampling_steps"] == 20
