"""`harmon eval dpg` and `harmon eval captions` on the embedded demo model (32 px images): DPG-Bench's grids read
back by its scorer's rules, the caption file formats, and the refusals (one line, exit status 2)."""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from harmon_pipelines.cli import main
from harmon_pipelines.evaluation.caption_files import read_captions
from harmon_pipelines.evaluation.image_metrics import image_prompts


PROMPTS = {"1": "a red circle", "2": "two blue squares", "10": "a green triangle above a red circle"}


def _scorer_crops(root: str, resolution: int, pic_num: int) -> dict[str, list[np.ndarray]]:
    """DPG-Bench's compute_dpg_bench.py restated (its path and crop logic only): every entry of the root is opened
    as an image, its id is the name up to the first dot, and tiles of `resolution` px are cropped at (left, top) =
    (0, 0), (R, 0), (0, R), (R, R), the first `pic_num` of them."""
    corners = [(0, 0), (resolution, 0), (0, resolution), (resolution, resolution)][:pic_num]
    crops = {}
    for name in os.listdir(root):
        with Image.open(os.path.join(root, name)) as grid:
            boxes = [(left, top, left + resolution, top + resolution) for left, top in corners]
            crops[name.split(".")[0]] = [np.asarray(grid.crop(box).convert("RGB")) for box in boxes]
    return crops


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _fails(argv: list[str], capsys, *words: str) -> str:
    """Run `harmon argv`, expecting exit status 2 with a one-line message holding `words`."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture(scope="module")
def dpg_run(tmp_path_factory):
    """One `harmon eval dpg` run of three prompts (plus a file it must ignore): (prompts folder, outdir, stderr)."""
    root = tmp_path_factory.mktemp("dpg")
    prompts = root / "prompts"
    prompts.mkdir()
    for item_id, prompt in PROMPTS.items():
        (prompts / f"{item_id}.txt").write_text(f"  {prompt}\n", encoding="utf-8")
    (prompts / "README.md").write_text("not a prompt")
    outdir = root / "out"
    argv = ["eval", "dpg", "--prompts", str(prompts), "--outdir", str(outdir), "--batch-size", "3", "--seed", "5"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 0, err.getvalue()
    return prompts, outdir, err.getvalue()


def test_dpg_grids_hold_the_tile_files_and_nothing_else(dpg_run):
    prompts, outdir, err = dpg_run
    assert "12 images in 1 batches; 0 already written, 12 to draw" in err
    assert "3 grid(s) written" in err and "--resolution 32 --pic-num 4" in err
    assert sorted(os.listdir(outdir / "grids")) == ["1.png", "10.png", "2.png"]
    for item_id, prompt in PROMPTS.items():
        grid = _pixels(outdir / "grids" / f"{item_id}.png")
        assert grid.shape == (64, 64, 3)
        for k, (left, top) in enumerate([(0, 0), (32, 0), (0, 32), (32, 32)]):
            tile = _pixels(outdir / "tiles" / item_id / f"{k}.png")
            assert np.array_equal(grid[top : top + 32, left : left + 32], tile)
            sidecar = json.loads((outdir / "tiles" / item_id / f"{k}.json").read_text(encoding="utf-8"))
            assert (sidecar["prompt"], sidecar["seed"], sidecar["id"]) == (prompt, 5 + k, item_id)
    assert not np.array_equal(_pixels(outdir / "tiles/1/0.png"), _pixels(outdir / "tiles/1/1.png"))


def test_dpg_scorer_crops_image_k_as_tile_k(dpg_run):
    _, outdir, _ = dpg_run
    crops = _scorer_crops(str(outdir / "grids"), 32, 4)
    assert sorted(crops) == sorted(PROMPTS)
    for item_id, tiles in crops.items():
        for k, tile in enumerate(tiles):
            assert np.array_equal(tile, _pixels(outdir / "tiles" / item_id / f"{k}.png"))


def test_dpg_rerun_draws_nothing_and_recomposes_only_changed_grids(dpg_run, tmp_path, capsys):
    prompts, first, _ = dpg_run
    outdir = tmp_path / "out"
    shutil.copytree(first, outdir)
    argv = ["eval", "dpg", "--prompts", str(prompts), "--outdir", str(outdir), "--batch-size", "3", "--seed", "5"]
    before = {name: (outdir / "grids" / name).read_bytes() for name in os.listdir(outdir / "grids")}
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "12 already written, 0 to draw" in err and "0 grid(s) written, 3 up to date" in err
    assert {name: (outdir / "grids" / name).read_bytes() for name in before} == before

    # -n 2: the tiles are there; the grids are recomposed from two of them, as --pic-num 2 crops them.
    assert main([*argv, "-n", "2"]) == 0
    err = capsys.readouterr().err
    assert "0 to draw" in err and "3 grid(s) written" in err and "--pic-num 2" in err
    for item_id, tiles in _scorer_crops(str(outdir / "grids"), 32, 2).items():
        assert _pixels(outdir / "grids" / f"{item_id}.png").shape == (32, 64, 3)
        assert all(
            np.array_equal(tile, _pixels(outdir / "tiles" / item_id / f"{k}.png")) for k, tile in enumerate(tiles)
        )

    # The scorer would try every entry of grids/: anything else there is refused before drawing.
    (outdir / "grids" / "dpg-bench_results.txt").write_text("")
    _fails(argv, capsys, "1 entry besides this run's grids", "dpg-bench_results.txt")
    (outdir / "grids" / "dpg-bench_results.txt").unlink()
    Image.new("RGB", (64, 64)).save(outdir / "grids" / "2.png")  # a grid harmon did not compose
    _fails(argv, capsys, "1 grid(s) not composed by harmon", "'2.png'", "--overwrite")
    assert main([*argv, "--overwrite"]) == 0
    assert np.array_equal(_pixels(outdir / "grids" / "2.png")[:32, 32:], _pixels(outdir / "tiles/2/1.png"))


def test_dpg_each_process_composes_the_grids_of_its_own_prompts(dpg_run, tmp_path, monkeypatch, capsys):
    """Under torchrun, batch i goes to rank i mod G and the rank that drew a prompt composes its grid: no grid is
    written by two processes, and every grid is there once every rank has run."""
    prompts, _, _ = dpg_run
    outdir = tmp_path / "out"
    argv = ["eval", "dpg", "--prompts", str(prompts), "--outdir", str(outdir), "-n", "1"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(os.listdir(outdir / "grids")) == ["1.png", "10.png"]  # batches 0 and 2 (ids in natural order)
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 0
    assert "rank 1/2: 1 grid(s) written, 0 up to date" in capsys.readouterr().err
    assert sorted(os.listdir(outdir / "grids")) == ["1.png", "10.png", "2.png"]
    assert _pixels(outdir / "grids" / "2.png").shape == (32, 32, 3)


@pytest.mark.parametrize(
    "files, extra, words",
    [
        ({"12.txt": "a cat", "12.v2.txt": "a dog"}, [], ["12.txt'", "12.v2.txt'", "one item id", "'12'"]),
        ({"12.v2.txt": "a dog"}, [], ["12.v2.txt'", "would read its id as '12'"]),
        ({"1.txt": "a cat", "2.txt": " \n"}, [], ["2.txt'", "is empty"]),
        ({"a b.txt": "a cat"}, [], ["a b.txt'", "letters, digits"]),
        ({"Ab.txt": "a cat", "aB.txt": "a dog"}, [], ["Ab.txt'", "aB.txt'", "differ only in case"]),
        ({"notes.md": "x"}, [], ["holds no <item_id>.txt prompt files"]),
        ({"1.txt": "a cat"}, ["-n", "5"], ["-n 5", "at most 4"]),
        ({"1.txt": "a cat"}, ["--size", "32x64"], ["--size 32x64", "square"]),
    ],
)
def test_dpg_refusals(tmp_path, capsys, files, extra, words):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name, text in files.items():
        (prompts / name).write_text(text, encoding="utf-8")
    _fails(["eval", "dpg", "--prompts", str(prompts), "--outdir", str(tmp_path / "out"), *extra], capsys, *words)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------ captions
COCO = {
    "images": [{"id": 9}, {"id": 3}],
    "annotations": [
        {"id": 51, "image_id": 9, "caption": "A dog on a sofa.\n"},
        {"id": 40, "image_id": 9, "caption": "A brown dog lying down."},
        {"id": 77, "image_id": 3, "caption": "Two cats."},
    ],
}
MJHQ = {
    "3f2a": {"category": "animals", "prompt": "a fox in snow"},
    "b-7": {"category": "food", "prompt": "  a bowl of ramen "},
}


@pytest.mark.parametrize(
    "name, text, kind, expected",
    [
        ("c.txt", "a cat\n  a dog \n\n", "txt", [("00000", "a cat", 1), ("00001", "a dog", 2)]),
        (
            "c.jsonl",
            '{"id": 7, "caption": "a cat"}\n\n{"id": "b-2", "prompt": "a dog", "source": "x"}\n',
            "jsonl",
            [("7", "a cat", 1), ("b-2", "a dog", 3)],
        ),
        ("one.jsonl", '{"id": "x", "caption": "a cat"}\n', "jsonl", [("x", "a cat", 1)]),
        (
            "meta_data.json",
            json.dumps(MJHQ, indent=2),
            "mjhq",
            [("3f2a", "a fox in snow", 1), ("b-7", "a bowl of ramen", 2)],
        ),
        (
            "captions_val2014.json",
            json.dumps(COCO),
            "coco",
            [("000000000003", "Two cats.", 1), ("000000000009", "A brown dog lying down.", 2)],
        ),
    ],
)
def test_caption_formats_are_told_by_content(tmp_path, name, text, kind, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    found, captions = read_captions(path)
    assert found == kind
    assert [(caption.id, caption.prompt, caption.line) for caption in captions] == expected
    if kind == "mjhq":
        assert captions[0].fields == {"category": "animals"}
    if kind == "coco":
        assert captions[1].fields == {"image_id": 9, "annotation_id": 40}


@pytest.mark.parametrize(
    "text, words",
    [
        (
            '{"id": 1, "caption": "a"}\n{"id": "2", "caption": "b"}\n{"id": "1", "caption": "c"}',
            ["'1'", "line 1 and line 3"],
        ),
        ('{"ab": {"prompt": "a"}, "cd": {"prompt": "b"}, "ab": {"prompt": "c"}}', ["'ab'", "entries 1 and 3"]),
        (
            json.dumps({"annotations": [*COCO["annotations"], {"id": 40, "image_id": 5, "caption": "x"}]}),
            ["id 40", "annotations[1] and annotations[3]"],
        ),
        ('{"id": "Ab", "caption": "a"}\n{"id": "aB", "caption": "b"}', ["line 1", "line 2", "differ only in case"]),
        ('{"id": "../x", "caption": "a"}\n{"id": "y", "caption": "b"}', ["line 1", "'../x' cannot name a file"]),
        ('{"id": "x", "caption": " "}\n{"id": "y", "caption": "b"}', ['line 1: "caption" must be a non-empty string']),
        ('{"id": "x", "caption": "a", "prompt": "b"}\n', ['line 1: give "caption" or "prompt"']),
        ('{"id": "x", "caption": "a"}\n{"id": "y", "caption": ', ["line 2: not valid JSON"]),
        ('{"a": {"prompt": "x"},\n "b": {"prompt": }}', ["not valid JSON", "line 2"]),
        ('{"a": {"category": "food"}}', ["key 'a'", '"prompt" must be a non-empty string']),
        ("a cat\n\na dog\n", ["line 2: blank line"]),
    ],
)
def test_bad_caption_files_are_refused_naming_file_and_place(tmp_path, text, words):
    path = tmp_path / "captions.any"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        read_captions(path)
    assert str(path) in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_captions_draws_one_image_per_caption_with_sidecars_clipscore_reads(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    lines = [
        {"id": "c1", "caption": "a red circle"},
        {"id": 2, "prompt": "two blue squares"},
        {"id": "c3", "caption": "x"},
    ]
    captions.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    outdir = tmp_path / "out"
    argv = ["eval", "captions", "--captions", str(captions), "--outdir", str(outdir), "--limit", "2", "--seed", "3"]
    argv += ["--batch-size", "2"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(os.listdir(outdir)) == ["2.json", "2.png", "c1.json", "c1.png"]
    pairs, layout = image_prompts(outdir)
    assert layout == "sidecars"
    assert [(path.name, prompt) for path, prompt in pairs] == [
        ("2.png", "two blue squares"),
        ("c1.png", "a red circle"),
    ]
    sidecar = json.loads((outdir / "2.json").read_text(encoding="utf-8"))
    assert (sidecar["seed"], sidecar["id"], sidecar["index"], sidecar["line"]) == (4, "2", 1, 2)
    assert _pixels(outdir / "c1.png").shape == (32, 32, 3)

    capsys.readouterr()
    assert main(argv) == 0
    assert "2 already written, 0 to draw" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(outdir / "old.png")  # FID would count it
    _fails(argv, capsys, "1 image(s) this run would not draw and FID would count", "old.png")


def test_captions_refusals(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "caption": "x"}\n{"id": "a", "caption": "y"}\n', encoding="utf-8")
    out = str(tmp_path / "out")
    _fails(
        ["eval", "captions", "--captions", str(path), "--outdir", out],
        capsys,
        "'a' is given twice",
        "line 1 and line 2",
    )
    path.write_text("a\nb\nc\n", encoding="utf-8")
    _fails(["eval", "captions", "--captions", str(path), "--outdir", out, "--max-images", "2"], capsys, "3 images")
    _fails(["eval", "captions", "--captions", str(tmp_path), "--outdir", out], capsys, "is a folder")
    assert not (tmp_path / "out").exists()
