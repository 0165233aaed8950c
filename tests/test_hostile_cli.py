"""The `harmon` command against hostile or mistaken inputs: each ends with exit status 2 and one line on stderr that
names the argument, with no traceback, and leaves every file as it was. Also: resume in batch mode trusts an image
only when its JSON matches what would be drawn now, large -n is drawn in chunks, written files get the usual mode.

Everything runs `main()` in this process on a tiny random model saved once per module.
"""

import json
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from harmon_pipelines import cli
from harmon_pipelines.cli import main
from modeling_harmon.modeling_harmon import HarmonForConditionalGeneration
from modeling_harmon.modeling_harmon_settings import HarmonSettingError
from modeling_harmon.pipeline_harmon import HarmonPipeline


REPO = Path(__file__).resolve().parents[1]
VECTOR_SET = Path(os.environ.get("HARMON_REF_VECTORS", REPO.parent / "shared" / "ref_vectors" / "tiny_a"))
needs_vectors = pytest.mark.skipif(not VECTOR_SET.is_dir(), reason=f"vector set {VECTOR_SET} not found")
FAST = ["--size", "16", "--steps", "1", "--head-steps", "1"]
SENTINEL = "pwned.txt"  # what the malicious pickles would create if they ran


class RunsCode:
    """Pickles to a call of `open(path, "w")`: loading it with plain pickle would create `path`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels (a decompression bomb as PIL sees it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def _damaged_model(good: Path, folder: Path, weights=None, config=None, raw_config: str | None = None) -> None:
    """A copy of the model folder `good` with `weights(state)` / `config(data)` applied, or config.json replaced."""
    shutil.copytree(good, folder)
    if weights is not None:
        save_file(
            weights(load_file(good / "model.safetensors")), folder / "model.safetensors", metadata={"format": "pt"}
        )
    if config is not None:
        data = json.loads((good / "config.json").read_text())
        config(data)
        (folder / "config.json").write_text(json.dumps(data))
    if raw_config is not None:
        (folder / "config.json").write_text(raw_config)


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny):
    """A folder of inputs, made once: the tiny model and damaged copies, checkpoints, JSONL files, images."""
    root = tmp_path_factory.mktemp("hostile")
    model, tokenizer = tiny
    good = root / "model"
    model.save_pretrained(good)
    tokenizer.save_pretrained(good)

    def without_mask_token(state):
        return {key: value for key, value in state.items() if key != "model.mar_decoder.mask_token"}

    _damaged_model(good, root / "model_missing", weights=without_mask_token)
    _damaged_model(
        good, root / "model_unexpected", weights=lambda state: {**state, "model.extra.weight": torch.ones(2)}
    )
    _damaged_model(
        good,
        root / "model_shape",
        weights=lambda state: {**state, "model.mar_decoder.mask_token": torch.ones(1, 1, 7)},
    )
    _damaged_model(good, root / "model_truncated")
    data = (good / "model.safetensors").read_bytes()
    (root / "model_truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    _damaged_model(
        good, root / "model_hidden_big", config=lambda config: config["text_config"].update(hidden_size="big")
    )
    _damaged_model(good, root / "model_encoder_big", config=lambda config: config.update(encoder_hidden_size="big"))
    _damaged_model(good, root / "model_bad_json", raw_config='{"model_type": "harmon",')

    checkpoint = root / "checkpoint.pth"
    torch.save({"llm.model.norm.weight": torch.ones(4)}, checkpoint)
    (root / "truncated.pth").write_bytes(checkpoint.read_bytes()[:100])
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 8)
    (root / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (root / "evil.pth").write_bytes(pickle.dumps({"w": RunsCode(root / SENTINEL)}, protocol=2))
    torch.save({"w": RunsCode(root / SENTINEL)}, root / "evil_zip.pth")

    (root / "steps_true.jsonl").write_text('{"prompt": "a red circle", "steps": true}\n')
    (root / "big_size.jsonl").write_text('{"prompt": "a red circle", "size": "4096"}\n')
    (root / "malformed.jsonl").write_text('{"prompt": "a red circle"\n')
    (root / "three.jsonl").write_text("".join(f'{{"prompt": "shape {i}"}}\n' for i in range(3)))
    (root / "prompts_folder").mkdir()
    os.mkfifo(root / "fifo")

    Image.new("RGB", (8, 8), "red").save(root / "photo.png")
    (root / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (root / "blocker").write_text("a file where a folder should be")
    (root / "folder.png").mkdir()

    mar_config = json.loads((VECTOR_SET / "config.json").read_text()) if VECTOR_SET.is_dir() else {"mar": {}}
    mar_config["mar"]["mlp_ratio"] = "four"
    (root / "mar_four.json").write_text(json.dumps(mar_config))
    (root / "mar_broken.json").write_text('{"mar": {')
    return root


def snapshot(folder: Path) -> dict:
    """Every entry under `folder`: a file's size, mtime and bytes; for anything else its kind."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if path.is_file() and not path.is_symlink():
            entries[str(path.relative_to(folder))] = (info.st_mtime_ns, info.st_mode, path.read_bytes())
        else:
            entries[str(path.relative_to(folder))] = ("folder" if path.is_dir() else "other", info.st_mode)
    return entries


def refused(capsys, argv: list, expected: list[str], folder: Path) -> str:
    """Run `harmon *argv`; check exit status 2, one stderr line `harmon CMD: error: ...` holding every `expected`
    text, no traceback and no file under `folder` changed. Returns the line."""
    before = snapshot(folder)
    capsys.readouterr()
    code = main([str(item) for item in argv])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1, (argv, captured.err)
    assert lines[0].startswith(f"harmon {argv[0]}: error: "), lines[0]
    assert all(text in lines[0] for text in expected), (expected, lines[0])
    assert "Traceback" not in captured.err and "weights_only" not in captured.err
    assert snapshot(folder) == before, f"{argv} changed files"
    return lines[0]


def _convert(harmon, vae=None, tokenizer="@model", mar_config=None, output="@converted"):
    """`harmon convert` arguments relative to the inputs folder (VECTOR_SET names resolved here)."""
    argv = [
        "convert",
        "--harmon-ckpt",
        harmon,
        "--tokenizer",
        tokenizer,
        "--llm-config",
        VECTOR_SET / "llm_hf",
        "--mar-config",
        mar_config or VECTOR_SET / "config.json",
        "--output",
        output,
    ]
    return argv + (["--vae-ckpt", vae] if vae is not None else [])


# (id, argv with "@name" for a path in the inputs folder, texts the error line must hold)
# A table, one case a row: kept out of the formatter.
# fmt: off
CASES = [
    # 2. upper bounds, refused before the model loads
    ("size_above_max_side", ["generate", "x", "-o", "@out/x.png", "--size", "100000x100000"],
     ["--size 100000x100000", "--max-side 2048"]),
    ("num_images_above_max", ["generate", "x", "-o", "@out/x.png", "-n", "2000000"], ["-n 2000000", "--max-images 10000"]),
    ("jsonl_size_above_max_side", ["generate", "--prompts", "@big_size.jsonl", "--outdir", "@out"],
     ['big_size.jsonl line 1: "size" 4096x4096', "--max-side 2048"]),
    ("jsonl_images_above_max", ["generate", "--prompts", "@three.jsonl", "-n", "5", "--max-images", "10", "--outdir", "@out"],
     ["three.jsonl", "15 images", "--max-images 10"]),
    # 3. silent wrong results
    ("weights_missing_a_tensor", ["generate", "x", "-o", "@out/x.png", "--model", "@model_missing", *FAST],
     ["--model", "model_missing", "1 tensor(s) missing", "model.mar_decoder.mask_token"]),
    ("weights_with_unexpected_tensor", ["generate", "x", "-o", "@out/x.png", "--model", "@model_unexpected", *FAST],
     ["--model", "unexpected", "model.extra.weight"]),
    ("jsonl_steps_true", ["generate", "--prompts", "@steps_true.jsonl", "--outdir", "@out", "--model", "@model"],
     ['steps_true.jsonl line 1: "steps" must be a number, got true']),
    ("empty_question", ["ask", "@photo.png", ""], ["QUESTION must not be empty"]),
    ("blank_question", ["ask", "@photo.png", "  \n"], ["QUESTION must not be empty"]),
    # 4. damaged inputs
    ("truncated_safetensors", ["generate", "x", "-o", "@out/x.png", "--model", "@model_truncated", *FAST],
     ["--model", "model_truncated", "cannot load it as the Harmon folder", "deserializing"]),
    ("config_hidden_size_string", ["generate", "x", "-o", "@out/x.png", "--model", "@model_hidden_big", *FAST],
     ["--model", "hidden_size", "big"]),
    ("config_harmon_field_string", ["generate", "x", "-o", "@out/x.png", "--model", "@model_encoder_big", *FAST],
     ["--model", '"encoder_hidden_size" must be an integer, got "big"']),
    ("config_not_json", ["generate", "x", "-o", "@out/x.png", "--model", "@model_bad_json", *FAST],
     ["--model", "config.json is not valid JSON"]),
    ("weights_of_another_shape", ["generate", "x", "-o", "@out/x.png", "--model", "@model_shape", *FAST],
     ["--model", "another shape", "model.mar_decoder.mask_token: (1, 1, 7) in the weights, (1, 1, 48) in the model"]),
    ("truncated_pth", ["convert", "--harmon-ckpt", "@truncated.pth", "--tokenizer", "t", "--llm-config", "l",
                       "--mar-config", "m", "--output", "@converted"],
     ["--harmon-ckpt", "truncated.pth' is not a readable PyTorch or safetensors checkpoint"]),
    ("empty_pth", ["convert", "--harmon-ckpt", "@empty.pth", "--tokenizer", "t", "--llm-config", "l",
                   "--mar-config", "m", "--output", "@converted"], ["--harmon-ckpt", "the file is empty"]),
    ("garbage_pth", ["convert", "--harmon-ckpt", "@garbage.pth", "--tokenizer", "t", "--llm-config", "l",
                     "--mar-config", "m", "--output", "@converted"], ["--harmon-ckpt", "not a readable PyTorch"]),
    ("garbage_safetensors", ["convert", "--harmon-ckpt", "@garbage.safetensors", "--tokenizer", "t", "--llm-config", "l",
                             "--mar-config", "m", "--output", "@converted"], ["--harmon-ckpt", "safetensors:"]),
    ("garbage_vae_ckpt", ["convert", "--harmon-ckpt", "@checkpoint.pth", "--vae-ckpt", "@garbage.pth", "--tokenizer",
                          "t", "--llm-config", "l", "--mar-config", "m", "--output", "@converted"],
     ["--vae-ckpt", "garbage.pth' is not a readable"]),
    ("malicious_pickle", ["convert", "--harmon-ckpt", "@evil.pth", "--tokenizer", "t", "--llm-config", "l",
                          "--mar-config", "m", "--output", "@converted"],
     ["--harmon-ckpt", "Python objects", "never runs code"]),
    ("malicious_torch_save", ["convert", "--harmon-ckpt", "@evil_zip.pth", "--tokenizer", "t", "--llm-config", "l",
                              "--mar-config", "m", "--output", "@converted"], ["--harmon-ckpt", "Python objects"]),
    ("unknown_device", ["generate", "x", "-o", "@out/x.png", "--device", "banana"], ["--device 'banana' is not a torch device"]),
    ("absent_device", ["generate", "x", "-o", "@out/x.png", "--device", "cuda:99"], ["--device 'cuda:99'"]),
    ("ask_unknown_device", ["ask", "@photo.png", "what?", "--device", "banana"], ["--device 'banana'"]),
    # 5. unclear messages
    ("prompts_is_a_folder", ["generate", "--prompts", "@prompts_folder", "--outdir", "@out"], ["--prompts", "is a folder"]),
    ("prompts_is_a_fifo", ["generate", "--prompts", "@fifo", "--outdir", "@out"], ["--prompts", "not a regular file"]),
    ("image_is_a_fifo", ["ask", "@fifo", "what?"], ["IMAGE", "not a regular file"]),
    ("checkpoint_is_a_fifo", ["convert", "--harmon-ckpt", "@fifo", "--tokenizer", "t", "--llm-config", "l",
                              "--mar-config", "m", "--output", "@converted"], ["--harmon-ckpt", "not a regular file"]),
    ("output_parent_is_a_file", ["generate", "x", "-o", "@blocker/x.png", *FAST], ["-o/--output", "is a file, not a folder"]),
    ("output_is_a_folder", ["generate", "x", "-o", "@folder.png", *FAST], ["-o/--output", "is a folder"]),
    ("outdir_is_a_file", ["generate", "--prompts", "@three.jsonl", "--outdir", "@blocker"], ["--outdir", "is a file"]),
    pytest.param("tokenizer_folder_missing", _convert(VECTOR_SET / "harmon_tiny.pth", VECTOR_SET / "kl16_tiny.ckpt",
                                                      tokenizer="@no_such_tokenizer"),
                 ["--tokenizer", "no_such_tokenizer': no such folder"], marks=needs_vectors),
    pytest.param("mar_config_wrong_type", _convert(VECTOR_SET / "harmon_tiny.pth", VECTOR_SET / "kl16_tiny.ckpt",
                 mar_config="@mar_four.json", tokenizer=VECTOR_SET / "llm_hf"),
                 ['--mar-config', '"mar.mlp_ratio" must be a number, got "four"'], marks=needs_vectors),
    pytest.param("mar_config_not_json", _convert(VECTOR_SET / "harmon_tiny.pth", VECTOR_SET / "kl16_tiny.ckpt",
                 mar_config="@mar_broken.json", tokenizer=VECTOR_SET / "llm_hf"),
                 ["--mar-config", "is not valid JSON"], marks=needs_vectors),
    # 6. refused before, still refused
    ("empty_prompt", ["generate", "", "-o", "@out/x.png"], ["PROMPT must not be empty"]),
    ("blank_prompt", ["generate", "  ", "-o", "@out/x.png"], ["PROMPT must not be empty"]),
    ("size_zero", ["generate", "x", "-o", "@out/x.png", "--size", "0", "--model", "@model"],
     ["--size 0x0", "positive multiple of 4"]),
    ("size_half_given", ["generate", "x", "-o", "@out/x.png", "--size", "12x"], ["argument --size", "'12x'"]),
    ("size_negative", ["generate", "x", "-o", "@out/x.png", "--size", "-5"], ["argument --size", "'-5'"]),
    ("size_off_stride", ["generate", "x", "-o", "@out/x.png", "--size", "18", "--model", "@model"],
     ["--size 18x18", "positive multiple of 4"]),
    ("jsonl_malformed", ["generate", "--prompts", "@malformed.jsonl", "--outdir", "@out"],
     ["malformed.jsonl line 1: not valid JSON"]),
    ("decompression_bomb", ["ask", "@bomb.png", "what?"], ["IMAGE", "bomb.png' is not an image PIL can read", "bomb"]),
    ("missing_image", ["ask", "@missing.png", "what?"], ["IMAGE", "missing.png': no such file"]),
    ("unknown_preset", ["generate", "x", "-o", "@out/x.png", "--model", "@model", "--sampling", "nope"],
     ["--sampling nope", "one of this model's sampling presets []"]),
]
# fmt: on


def _ids(case):
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("name, argv, expected", CASES, ids=[_ids(case) for case in CASES])
def test_refused_with_one_line(name, argv, expected, root, capsys):
    argv = [root / item[1:] if isinstance(item, str) and item.startswith("@") else item for item in argv]
    refused(capsys, argv, expected, root)
    assert not (root / SENTINEL).exists()  # the malicious pickles did not run


def test_output_folder_not_writable(root, capsys, monkeypatch):
    locked = root / "locked"
    locked.mkdir(exist_ok=True)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and access(path, mode, **kw))
    refused(
        capsys, ["generate", "x", "-o", locked / "x.png", *FAST], ["-o/--output", "cannot write in the folder"], root
    )
    refused(
        capsys,
        ["generate", "--prompts", root / "three.jsonl", "--outdir", locked / "images"],
        ["--outdir", "cannot write in the folder"],
        root,
    )


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"),
        MemoryError(),
    ],
)
def test_out_of_memory_while_drawing(error, root, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(HarmonPipeline, "__call__", fail)
    line = refused(
        capsys,
        ["generate", "x", "-o", root / "out" / "x.png", "--model", root / "model", *FAST],
        ["out of memory drawing 1 image(s) of 16x16", "--size", "--batch-size"],
        root,
    )
    assert "Tried to allocate" not in line


def test_size_beyond_the_llm_positions_names_size(root, capsys, monkeypatch, tiny):
    """Sizes within --max-side whose tokens the LLM cannot hold: the model refuses them; the line names --size."""
    try:
        tiny[0].resolve_image_generation_settings(height=2048, width=2048)
        refuses = False
    except ValueError:
        refuses = True
    if refuses:  # the model's own check
        refused(
            capsys,
            ["generate", "x", "-o", root / "out" / "x.png", "--model", root / "model", "--size", "2048"],
            ["--size 2048x2048"],
            root,
        )

    # The flag is found from the error's `field` (data), whatever its message says.
    def too_many_tokens(self, sampling=None, **given):
        raise HarmonSettingError("width", "and height hold more tokens than the 32768 positions", "the size")

    monkeypatch.setattr(HarmonForConditionalGeneration, "image_generation_settings", too_many_tokens)
    refused(
        capsys,
        ["generate", "x", "-o", root / "out" / "x.png", "--model", root / "model", "--size", "2048"],
        ["--size 2048x2048: the size and height hold more tokens"],
        root,
    )


def _generate(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(item) for item in argv])
    return code, capsys.readouterr().err


def test_resume_redraws_only_matching_images(root, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square", "seed": 7}\n')
    outdir = tmp_path / "images"
    base = ["generate", "--prompts", prompts, "--outdir", outdir, "--model", root / "model", *FAST]
    code, err = _generate(capsys, *base)
    assert code == 0, err
    first = snapshot(outdir)

    # Changed inputs: refused, naming how many images, the first one and the field; nothing touched.
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "a green square", "seed": 7}\n')
    changes = [
        ([], ["1 image(s)", "first: 00002_0.png", 'prompt "a blue square" then, "a green square" now', "--overwrite"]),
        (["--cfg", "2"], ["2 image(s)", "first: 00001_0.png", "settings.guidance_scale 3.0 then, 2.0 now"]),
        (["--steps", "2"], ["2 image(s)", "settings.num_inference_steps 1 then, 2 now"]),
        (["--seed", "3"], ["2 image(s)", "first: 00001_0.png", "seed 0 then, 3 now"]),
    ]
    for extra, expected in changes:
        refused(capsys, [*base, *extra], ["--outdir", *expected], tmp_path)

    # --overwrite redraws the changed image only.
    code, err = _generate(capsys, *base, "--overwrite")
    assert code == 0 and "1 already written, 1 to draw" in err, err
    after = snapshot(outdir)
    assert {name for name in first if after[name] != first[name]} == {"00002_0.png", "00002_0.json"}
    assert json.loads((outdir / "00002_0.json").read_text())["prompt"] == "a green square"

    # An unreadable sidecar counts as unfinished: the image is redrawn, identically.
    (outdir / "00001_0.json").write_text('{"prompt": "a red')
    code, err = _generate(capsys, *base)
    assert code == 0 and "1 already written, 1 to draw" in err, err
    assert snapshot(outdir)["00001_0.png"][2] == first["00001_0.png"][2]
    assert json.loads((outdir / "00001_0.json").read_text()) == json.loads(first["00001_0.json"][2])
    code, err = _generate(capsys, *base)
    assert code == 0 and "2 already written, 0 to draw" in err


def test_many_images_are_drawn_in_chunks_with_the_same_seeds(root, tmp_path, capsys, monkeypatch):
    calls = []
    draw = cli.draw_output

    def counting(pipe, prompts, seeds, settings, **inputs):
        calls.append(list(seeds))
        return draw(pipe, prompts, seeds, settings, **inputs)

    monkeypatch.setattr(cli, "draw_output", counting)
    model = ["--model", root / "model", *FAST, "-n", "3", "--seed", "4"]
    code, _ = _generate(
        capsys, "generate", "a red circle", "-o", tmp_path / "chunked.png", "--batch-size", "2", *model
    )
    assert code == 0 and calls == [[4, 5], [6]]
    code, _ = _generate(capsys, "generate", "a red circle", "-o", tmp_path / "together.png", *model)
    assert code == 0 and calls[2:] == [[4, 5, 6]]  # the default chunk holds all three
    for k in range(3):
        chunked, together = (Image.open(tmp_path / f"{stem}_{k}.png") for stem in ("chunked", "together"))
        assert json.loads(chunked.text["harmon"])["seed"] == 4 + k
        difference = np.abs(np.asarray(chunked, dtype=np.int16) - np.asarray(together, dtype=np.int16))
        assert difference.max() <= 1  # equal up to float rounding of batched products


@needs_vectors
def test_convert_writes_files_with_the_usual_permissions(tmp_path, capsys):
    umask = os.umask(0o022)
    try:
        code = main(
            [
                str(item)
                for item in _convert(
                    VECTOR_SET / "harmon_tiny.pth",
                    VECTOR_SET / "kl16_tiny.ckpt",
                    tokenizer=VECTOR_SET / "llm_hf",
                    output=tmp_path / "out",
                )
            ]
        )
    finally:
        os.umask(umask)
    assert code == 0, capsys.readouterr().err
    modes = {
        str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777)
        for path in (tmp_path / "out").rglob("*")
        if path.is_file()
    }
    assert modes["out/model.safetensors"] == "0o644"
    assert set(modes.values()) == {"0o644"}, modes


def test_batch_interrupted_between_image_and_sidecar_resumes_to_the_same_files(root, tmp_path, capsys, monkeypatch):
    """A kill after an image's PNG but before its JSON (each written atomically) leaves an unfinished image, which the
    rerun redraws: the folder ends as an uninterrupted run's, byte for byte."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square", "seed": 7}\n{"prompt": "a tree"}\n')
    arguments = ["generate", "--prompts", prompts, "--model", root / "model", *FAST, "-n", "2"]
    assert _generate(capsys, *arguments, "--outdir", tmp_path / "whole")[0] == 0
    written = []
    write_json = cli.write_json

    def killed_at_the_fourth(data, path):
        if len(written) == 3:
            raise KeyboardInterrupt  # stands in for kill -9: nothing after this point runs
        written.append(path)
        write_json(data, path)

    monkeypatch.setattr(cli, "write_json", killed_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        main([str(item) for item in [*arguments, "--outdir", tmp_path / "killed"]])
    monkeypatch.setattr(cli, "write_json", write_json)
    assert sorted(path.name for path in (tmp_path / "killed").glob("*.json")) == sorted(p.name for p in written)
    code, err = _generate(capsys, *arguments, "--outdir", tmp_path / "killed")
    assert code == 0 and "3 already written, 3 to draw" in err, err
    contents = [{name: entry[2] for name, entry in snapshot(tmp_path / run).items()} for run in ("killed", "whole")]
    assert contents[0] == contents[1]
