"""`harmon generate --prompts` with image lines (inpaint, outpaint, vary): files and sidecars, resume against changed
input files, batching of different pictures, the same images as the single commands, one-line errors naming file,
line and key; and `batch_jobs` driven by code with another layout (what benchmark layouts reuse).

Everything runs `main()` in this process on the tiny random model (`tiny_dir`), 32 x 32 pictures, few steps."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmon_pipelines import batch_jobs
from harmon_pipelines.cli import main


FAST = ["--head-steps", "1"]  # MAR iterations: "steps" per line, or the model's scaled by the share drawn


def call(capsys, *argv) -> tuple[int, list[str]]:
    """`harmon *argv` in this process: (exit status, stderr lines without progress bars)."""
    capsys.readouterr()
    code = main([str(item) for item in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "s/it]" not in line]


def said(err: list[str], words: str) -> bool:
    return any(words in line for line in err)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def mtimes(folder: Path) -> dict:
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.iterdir())}


def _mask(columns: slice, rows: slice = slice(None), size=(32, 32)) -> Image.Image:
    array = np.zeros(size, dtype=np.uint8)
    array[rows, columns] = 255
    return Image.fromarray(array)


def write_jobs(path: Path, *entries: dict) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """A folder `jobs/` with `in/scene.png`, `in/other.png` (32 x 32), `in/left.png` and `in/right.png` (masks of
    the left and right halves: 32 tokens each) and `in/dot.png` (a mask of one token)."""
    folder = tmp_path_factory.mktemp("batch") / "jobs"
    (folder / "in").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("scene", "other"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "in" / f"{name}.png")
    _mask(slice(0, 16)).save(folder / "in" / "left.png")
    _mask(slice(16, 32)).save(folder / "in" / "right.png")
    _mask(slice(5, 6), slice(5, 6)).save(folder / "in" / "dot.png")
    return folder


def canvas_lines(folder: Path) -> list[dict]:
    return [
        {"prompt": "a green triangle", "image": "in/scene.png", "mask": "in/left.png", "steps": 2},
        {"prompt": "a wider scene", "image": "in/scene.png", "left": 8, "top": 4, "steps": 2, "seed": 3},
        # absolute path; no "steps": the model's iterations, scaled by the share drawn (16 of 64 tokens)
        {"prompt": "a red circle", "image": str(folder / "in" / "scene.png"), "strength": 0.25, "seed": 5},
        {"prompt": "a blue square", "size": 16, "steps": 2},
    ]


@pytest.fixture(scope="module")
def drawn(pictures, tiny_dir):
    """The canvas lines drawn once with -n 2 into `jobs/out/` (module-wide; tests copy it before changing it)."""
    jobs = write_jobs(pictures / "prompts.jsonl", *canvas_lines(pictures))
    assert main(["generate", "--prompts", str(jobs), "--outdir", str(pictures / "out"), "-n", "2", "--model",
                 str(tiny_dir), *FAST]) == 0  # fmt: skip
    return pictures / "out"


def test_canvas_lines_are_drawn_with_their_inputs_recorded(pictures, drawn):
    assert {path.name for path in drawn.iterdir()} == {
        f"{line:05d}_{k}.{ext}" for line in (1, 2, 3, 4) for k in (0, 1) for ext in ("png", "json")
    }
    sha = {
        name: hashlib.sha256((pictures / "in" / f"{name}.png").read_bytes()).hexdigest() for name in ("scene", "left")
    }
    records = {line: json.loads((drawn / f"{line:05d}_1.json").read_text()) for line in (1, 2, 3, 4)}
    assert records[1]["mode"] == "inpaint" and records[1]["paste_back"] is True
    assert records[1]["inputs"] == {
        "image": "in/scene.png",
        "image_sha256": sha["scene"],
        "mask": "in/left.png",
        "mask_sha256": sha["left"],
    }
    assert records[2]["mode"] == "outpaint" and records[2]["seed"] == 4 and records[2]["settings"]["width"] == 40
    assert records[2]["inputs"] == {"image": "in/scene.png", "image_sha256": sha["scene"], "left": 8, "right": 0,
                                    "top": 4, "bottom": 0}  # fmt: skip
    assert Image.open(drawn / "00002_0.png").size == (40, 36)  # (width, height): 32 + 8 by 32 + 4
    assert records[3]["mode"] == "vary" and records[3]["strength"] == 0.25 and "paste_back" not in records[3]
    assert records[3]["inputs"]["image"] == str(pictures / "in" / "scene.png")  # as given: absolute
    assert records[3]["settings"]["num_inference_steps"] is None  # scaled by the model
    assert "mode" not in records[4] and "inputs" not in records[4]  # a text line is recorded as before
    assert [records[line]["prompt_source"] for line in (1, 2, 3)] == ["given"] * 3  # batch lines need a prompt
    for line, record in records.items():
        assert (record["line"], record["image"]) == (line, 1)
        png = json.loads(Image.open(drawn / f"{line:05d}_1.png").text["harmon"])
        assert png == {key: value for key, value in record.items() if key not in ("line", "image")}


def test_batch_images_equal_the_single_commands(pictures, drawn, tiny_dir, tmp_path, capsys):
    scene, model = pictures / "in" / "scene.png", ["--model", tiny_dir, "-n", "2", *FAST]
    singles = {
        1: ["inpaint", scene, "--mask", pictures / "in" / "left.png", "a green triangle", "--steps", "2"],
        2: ["outpaint", scene, "--left", "8", "--top", "4", "a wider scene", "--steps", "2", "--seed", "3"],
        3: ["vary", scene, "a red circle", "--strength", "0.25", "--seed", "5"],
    }
    for line, argv in singles.items():
        code, err = call(capsys, *argv, "-o", tmp_path / f"{line}.png", *model)
        assert code == 0, err
        for k in range(2):
            assert np.array_equal(pixels(drawn / f"{line:05d}_{k}.png"), pixels(tmp_path / f"{line}_{k}.png"))
            single = json.loads(Image.open(tmp_path / f"{line}_{k}.png").text["harmon"])
            batch = json.loads(Image.open(drawn / f"{line:05d}_{k}.png").text["harmon"])
            assert {**single, "inputs": None} == {**batch, "inputs": None}  # paths differ only: as given
            assert single["inputs"]["image_sha256"] == batch["inputs"]["image_sha256"]


def test_resume_skips_finished_images_and_refuses_changed_input_files(pictures, drawn, tiny_dir, tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    jobs, out = tmp_path / "jobs", tmp_path / "jobs" / "out"
    shutil.copytree(pictures, jobs)  # relative paths now point into the copy, the absolute one to the original
    calls = []
    draw = batch_jobs.draw

    def counting(pipe, prompts, seeds, settings, **inputs):
        calls.append(seeds)
        return draw(pipe, prompts, seeds, settings, **inputs)

    monkeypatch.setattr(batch_jobs, "draw", counting)
    base = ["generate", "--prompts", jobs / "prompts.jsonl", "--outdir", out, "-n", "2", "--model", tiny_dir, *FAST]
    before = mtimes(out)
    code, err = call(capsys, *base)
    assert code == 0 and said(err, "8 already written, 0 to draw") and calls == [], err
    assert mtimes(out) == before

    # Same path, other bytes: refused, naming the field and the file; nothing is touched.
    _mask(slice(0, 12)).save(jobs / "in" / "left.png")
    code, err = call(capsys, *base)
    assert code == 2 and len(err) == 1 and calls == [], err
    for words in ("2 image(s)", "first: 00001_0.png", "inputs.mask_sha256", "'in/left.png'", "--overwrite"):
        assert words in err[0], (words, err[0])
    assert mtimes(out) == before

    # --overwrite redraws line 1's two images (one call), with the new hash; nothing else.
    code, err = call(capsys, *base, "--overwrite")
    assert code == 0 and said(err, "6 already written, 2 to draw") and calls == [[0, 1]], err
    after = mtimes(out)
    assert {name for name in after if after[name] != before[name]} == {
        f"00001_{k}.{e}" for k in (0, 1) for e in ("png", "json")
    }
    record = json.loads((out / "00001_0.json").read_text())
    assert record["inputs"]["mask_sha256"] == hashlib.sha256((jobs / "in" / "left.png").read_bytes()).hexdigest()
    code, err = call(capsys, *base)
    assert code == 0 and said(err, "8 already written, 0 to draw") and len(calls) == 1

    # A changed canvas argument is another input too (here the padding moves: the same canvas size).
    lines = canvas_lines(pictures)
    lines[1]["right"] = lines[1].pop("left")
    write_jobs(jobs / "prompts.jsonl", *lines)
    code, err = call(capsys, *base)
    assert code == 2 and len(err) == 1 and "first: 00002_0.png, inputs.left 8 then, 0 now" in err[0], err


def test_lines_of_one_picture_share_a_call_and_every_process_count_gives_the_same_files(
    pictures, tiny_dir, tmp_path, capsys, monkeypatch
):
    calls = []
    draw = batch_jobs.draw

    def counting(pipe, prompts, seeds, settings, **inputs):
        calls.append((len(prompts), inputs["image"].size))
        return draw(pipe, prompts, seeds, settings, **inputs)

    monkeypatch.setattr(batch_jobs, "draw", counting)
    jobs = write_jobs(
        pictures / "batched.jsonl",
        {"prompt": "a", "image": "in/scene.png", "mask": "in/left.png", "steps": 2},
        {"prompt": "b", "image": "in/scene.png", "mask": "in/left.png", "steps": 2, "seed": 9},
        {"prompt": "c", "image": "in/other.png", "mask": "in/left.png", "steps": 2},  # another picture
        {"prompt": "d", "image": "in/scene.png", "left": 4, "steps": 2},
        {"prompt": "e", "image": "in/scene.png", "left": 4, "steps": 2, "paste_back": False},  # another argument
        {"prompt": "f", "image": "in/other.png", "strength": 0.5, "steps": 2},
        {"prompt": "g", "image": str(pictures / "in" / "other.png"), "strength": 0.5, "steps": 2},  # same bytes
    )
    options = ["--prompts", jobs, "--batch-size", "4", "--model", tiny_dir, *FAST]
    code, err = call(capsys, "generate", *options, "--outdir", tmp_path / "together")
    assert code == 0, err
    assert calls == [(2, (32, 32)), (1, (32, 32)), (1, (36, 32)), (1, (36, 32)), (2, (32, 32))]
    names = {path.name for path in (tmp_path / "together").iterdir()}
    assert len(names) == 14
    # Drawn one line per call: the same images up to float rounding of batched products.
    code, err = call(capsys, "generate", *options[:2], *options[4:], "--outdir", tmp_path / "alone")
    assert code == 0 and len(calls) == 5 + 7, err
    for line in (1, 2, 6, 7):
        together, alone = (pixels(tmp_path / run / f"{line:05d}_0.png") for run in ("together", "alone"))
        assert np.abs(together - alone).max() <= 1, line
    # Two processes (as torchrun would start them) write the files one process writes, byte for byte.
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, err = call(capsys, "generate", *options, "--outdir", tmp_path / "two")
        assert code == 0, err
    assert {path.name for path in (tmp_path / "two").iterdir()} == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "together" / name).read_bytes(), name


def test_bad_image_lines_fail_with_one_line_naming_file_line_and_key(
    pictures, tiny_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(batch_jobs, "draw", lambda *args, **kwargs: pytest.fail("nothing may be drawn"))
    (pictures / "in" / "text.png").write_text("not a picture")
    Image.new("RGB", (30, 32), "white").save(pictures / "in" / "odd.png")
    Image.new("L", (16, 16), 255).save(pictures / "in" / "small.png")
    Image.new("L", (32, 32), 0).save(pictures / "in" / "black.png")
    good = {"prompt": "x", "image": "in/scene.png", "mask": "in/left.png", "steps": 2}
    inpaint, outpaint, vary = (
        {"prompt": "x", "image": "in/scene.png", "mask": "in/left.png"},
        {"prompt": "x", "image": "in/scene.png"},
        {"prompt": "x", "image": "in/scene.png", "strength": 0.5},
    )
    cases = [
        ({**inpaint, "image": "in/nope.png"}, ['"image"', "nope.png", "no such file"]),
        ({**inpaint, "image": "in/text.png"}, ['"image"', "text.png", "is not an image PIL can read"]),
        ({**inpaint, "mask": "in/nope.png"}, ['"mask"', "nope.png", "no such file"]),
        ({**inpaint, "mask": "in/small.png"}, ['"mask" is 16x16 pixels but "image" is 32x32']),
        ({**inpaint, "mask": "in/black.png"}, ["\"mask\" 'in/black.png' selects no token to redraw"]),
        ({**inpaint, "mask": "in/dot.png", "steps": 4}, ['"steps" 4: num_iter must be an integer in [1, 1]']),
        ({**inpaint, "image": 3}, ['"image" must be a file path (a non-empty string), got 3']),
        ({**inpaint, "mask": ""}, ['"mask" must be a file path (a non-empty string), got ""']),
        ({**vary, "image": "in/odd.png"}, ['"image"', "is 30x32 pixels; its sides must be multiples of 4"]),
        ({**vary, "strength": 1.5}, ['"strength" must be a number in [0, 1], got 1.5']),
        ({**vary, "strength": -0.1}, ['"strength" must be a number in [0, 1], got -0.1']),
        ({**vary, "strength": "0.5"}, ['"strength" must be a number in [0, 1], got "0.5"']),
        ({**vary, "strength": True}, ['"strength" must be a number in [0, 1], got true']),
        ({**vary, "strength": None}, ['"strength" must be a number in [0, 1], got null']),
        ({**outpaint, "left": -4}, ['"left" must be a whole number of pixels >= 0, got -4']),
        ({**outpaint, "right": 4.5}, ['"right" must be a whole number of pixels >= 0, got 4.5']),
        ({**outpaint, "top": True}, ['"top" must be a whole number of pixels >= 0, got true']),
        ({**outpaint, "bottom": "8"}, ['"bottom" must be a whole number of pixels >= 0, got "8"']),
        ({**outpaint, "left": 6}, ['"left" must be a multiple of 4 pixels (the model\'s token stride), got 6']),
        ({**outpaint, "left": 0}, ['"left" is 0: outpaint needs "left", "right", "top" or "bottom" > 0']),
        ({**outpaint, "right": 768, "bottom": 768}, ['"right" 768, "bottom" 768', "max_position_embeddings"]),
        ({**outpaint, "right": 4096}, ['"right" 4096 (4128 pixels wide, 32 high)', "--max-side 2048"]),
        ({"prompt": "x", "image": "in/scene.png"}, ['"image" needs a mode: inpaint ("mask")']),
        ({**inpaint, "strength": 0.5}, ['"mask" (inpaint) and "strength" (vary) cannot be combined']),
        ({**vary, "top": 8}, ['"top" (outpaint) and "strength" (vary) cannot be combined']),
        ({"prompt": "x", "mask": "in/left.png"}, ['"mask" needs "image"']),
        ({"prompt": "x", "strength": 0.5}, ['"strength" needs "image"']),
        ({**inpaint, "size": 32}, ['"size" does not apply to an image line']),
        ({**vary, "paste_back": False}, ['"paste_back" applies to inpaint and outpaint lines']),
        ({**inpaint, "paste_back": "yes"}, ['"paste_back" must be true or false, got "yes"']),
        ({**inpaint, "paste_back": 1}, ['"paste_back" must be true or false, got 1']),
        ({**inpaint, "prompt": ""}, ['"prompt" must be a non-empty string']),
        ({key: value for key, value in vary.items() if key != "prompt"}, ['"prompt" must be a non-empty string']),
        ({**inpaint, "colour": "red"}, ["unknown keys ['colour']"]),
    ]
    jobs, out = pictures / "bad.jsonl", tmp_path / "out"
    for entry, expected in cases:
        write_jobs(jobs, good, entry)  # the bad line is line 2
        code, err = call(capsys, "generate", "--prompts", jobs, "--outdir", out, "--model", tiny_dir, *FAST)
        assert code == 2 and len(err) == 1, (entry, err)
        assert err[0].startswith(f"harmon generate: error: {jobs} line 2: "), (entry, err[0])
        assert all(words in err[0] for words in expected), (entry, expected, err[0])
        assert not out.exists()


def test_batch_jobs_take_another_layout_and_sidecar_fields(tiny, tmp_path, capsys):
    """What a benchmark's layout reuses: its own keys per line, nested file names, extra sidecar fields."""
    model, tokenizer = tiny
    jobs_file = write_jobs(
        tmp_path / "bench.jsonl",
        {"prompt": "a red circle", "tag": "single_object"},
        {"prompt": "two cats", "tag": "counting", "seed": 4},
    )
    layout = batch_jobs.Layout(
        tmp_path / "bench",
        stem=lambda job, k: f"{job.line - 1:05d}/samples/{k:04d}",
        sidecar_fields=lambda job, k: {"tag": job.fields["tag"]},
    )
    options = {"size": (16, 16), "steps": 2, "head_steps": 1}
    jobs = batch_jobs.read_jobs(jobs_file, num_images=2, options=options, extra_keys=("tag",))
    jobs = batch_jobs.resolve_jobs(jobs, model)
    assert batch_jobs.run_jobs(jobs, layout, model, tokenizer, num_images=2, batch_size=2) == 4
    assert sorted(str(path.relative_to(layout.outdir)) for path in layout.outdir.rglob("*.png")) == [
        f"{index:05d}/samples/{k:04d}.png" for index in (0, 1) for k in (0, 1)
    ]
    record = json.loads((layout.outdir / "00001" / "samples" / "0001.json").read_text())
    assert (record["tag"], record["seed"], record["line"], record["image"]) == ("counting", 5, 2, 1)
    assert batch_jobs.run_jobs(jobs, layout, model, tokenizer, num_images=2, batch_size=2) == 0  # all finished
    retagged = [dataclasses.replace(job, fields={"tag": "colors"}) for job in jobs]
    with pytest.raises(batch_jobs.CommandError, match=r"4 image\(s\).*first: 00000/samples/0000.png, tag "):
        batch_jobs.run_jobs(retagged, layout, model, tokenizer, num_images=2, batch_size=2)
    with pytest.raises(ValueError, match="gives .* to two images"):
        batch_jobs.run_jobs(jobs, batch_jobs.Layout(tmp_path / "x", stem=lambda job, k: "same"), model, tokenizer)
