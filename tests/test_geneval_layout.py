"""GenEval's files: the metadata reader's refusals, the folder layout read by GenEval's rules, and ShapesEval's prompts
as GenEval metadata that the Shapes checker can score back."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from harmon_pipelines.evaluation.geneval_layout import (
    iter_geneval_samples,
    prompt_folder,
    read_geneval_metadata,
    sample_stem,
)


def _geneval_scorer_paths(imagedir: str) -> list[tuple[dict, str]]:
    """What GenEval's evaluation/evaluate_images.py `main` visits (its path logic restated: folders named by digits
    only, metadata read whole with json.load, samples whose name starts with digits then ".png")."""
    visited = []
    for subfolder in sorted(os.listdir(imagedir)):
        folderpath = os.path.join(imagedir, subfolder)
        if not os.path.isdir(folderpath) or not subfolder.isdigit():
            continue
        with open(os.path.join(folderpath, "metadata.jsonl")) as handle:
            metadata = json.load(handle)
        for imagename in sorted(os.listdir(os.path.join(folderpath, "samples"))):
            imagepath = os.path.join(folderpath, "samples", imagename)
            if os.path.isfile(imagepath) and re.match(r"\d+\.png", imagename):
                visited.append((metadata, imagepath))
    return visited


def test_the_layout_is_read_as_genevals_scorer_reads_it(tmp_path):
    for index, prompt in enumerate(["a photo of a cat", "a photo of two dogs"]):
        samples = prompt_folder(tmp_path, index) / "samples"
        samples.mkdir(parents=True)
        (samples.parent / "metadata.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": prompt}))
        for name in ("0000.png", "0001.png", "0000.json", ".0002.png.tmp.png", "grid.png", "12.png.bak"):
            (samples / name).write_bytes(b"x")
        (samples / "0003.png").mkdir()  # a folder with an image's name is not an image
    (tmp_path / "notes").mkdir()  # not digits: skipped
    (tmp_path / ".harmon-output.json").write_text("{}")
    ours = [(metadata, str(path)) for metadata, path in iter_geneval_samples(tmp_path)]
    assert ours == _geneval_scorer_paths(str(tmp_path))
    assert [os.path.basename(path) for _, path in ours] == ["0000.png", "0001.png", "12.png.bak"] * 2
    assert sample_stem(3, 1) == "00003/samples/0001"


@pytest.mark.parametrize(
    "line, words",
    [
        ("not json", "line 2: not valid JSON"),
        ("[1]", "line 2: expected a JSON object"),
        ('{"tag": "counting"}', 'line 2: "prompt" must be a non-empty string'),
        ('{"prompt": "a cat"}', 'line 2: "tag" must be a string'),
        ('{"prompt": "a cat", "tag": "x", "include": [{"class": "cat"}]}', '"include" must be a list'),
        ('{"prompt": "a cat", "tag": "x", "include": [{"class": "cat", "count": true}]}', '"include" must be a list'),
        ("", "line 2: blank line"),
    ],
)
def test_bad_metadata_lines_are_refused_naming_file_and_line(tmp_path, line, words):
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"prompt": "a photo of a cat", "tag": "single_object"}\n' + line + "\n")
    with pytest.raises(ValueError) as caught:
        read_geneval_metadata(path)
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_shapes_prompts_as_geneval_metadata_round_trip_through_the_checker(tmp_path):
    from harmon_training.shapes.evaluation import generation_scores, prompt_scenes
    from harmon_training.shapes.evaluation_geneval import geneval_metadata, scene_from_geneval, score_geneval_layout
    from harmon_training.shapes.world import render

    lines = geneval_metadata(9, seed=3)
    scenes = prompt_scenes(9, seed=3)
    assert [line["prompt"] for line in lines] == [scene.caption() for scene in scenes]
    assert [line["seed"] for line in lines] == list(range(3, 12))
    assert {line["tag"] for line in lines} == {"single_object", "position", "counting"}
    two = next(line for line in lines if line["tag"] == "position")
    assert "position" in two["include"][1] and two["include"][1]["position"][1] == 0  # GenEval's back-reference
    assert scene_from_geneval(lines[0], "x") == scenes[0]

    path = tmp_path / "metadata.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rng = np.random.default_rng(0)
    for index, line in enumerate(read_geneval_metadata(path)):
        samples = prompt_folder(tmp_path / "layout", index) / "samples"
        samples.mkdir(parents=True)
        (samples.parent / "metadata.jsonl").write_text(json.dumps(line))
        # Ground-truth renders of the scenes: the checker must find them right (as ShapesEval's own tests assume).
        import random

        render(scenes[index], random.Random(int(rng.integers(1000)))).save(samples / "0000.png")
    scored = score_geneval_layout(iter_geneval_samples(tmp_path / "layout"))
    from harmon_training.shapes.checker import check

    direct = generation_scores(
        scenes,
        [
            check(scene, np.asarray(Image.open(prompt_folder(tmp_path / "layout", i) / "samples" / "0000.png")))
            for i, scene in enumerate(scenes)
        ],
    )
    assert scored["n"] == 9 and scored["generation"] == direct
    assert scored["generation"]["overall"] > 0.8


def test_metadata_without_a_shapes_scene_is_refused_by_the_shapes_scorer(tmp_path):
    from harmon_training.shapes.evaluation_geneval import score_geneval_layout

    samples = prompt_folder(tmp_path, 0) / "samples"
    samples.mkdir(parents=True)
    (samples.parent / "metadata.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": "a photo of a cat"}))
    Image.new("RGB", (32, 32)).save(samples / "0000.png")
    with pytest.raises(ValueError, match="no 'shapes_scene' key"):
        score_geneval_layout(iter_geneval_samples(tmp_path))
    with pytest.raises(ValueError, match="holds no GenEval samples"):
        score_geneval_layout([])


def test_the_shapes_path_through_geneval_files_scores_what_harmon_eval_shapes_scores(tmp_path, capsys):
    """CI's end-to-end run of the GenEval harness on a real trained model (the embedded demo model): ShapesEval's
    prompts as GenEval metadata, drawn by `harmon eval geneval`, scored by the Shapes checker from the layout, equal
    to `harmon eval shapes` on the same prompts, seeds and settings; a rerun draws nothing."""
    from harmon_pipelines.cli import main

    metadata, layout = tmp_path / "shapes_metadata.jsonl", tmp_path / "layout"
    assert main(["eval", "shapes", "--write-geneval-metadata", str(metadata), "--n", "9", "--seed", "4"]) == 0
    draw = ["eval", "geneval", "--metadata", str(metadata), "--outdir", str(layout), "-n", "1", "--batch-size", "16"]
    assert main(draw) == 0, capsys.readouterr().err
    assert main(["eval", "shapes", "--score-geneval", str(layout), "--json", str(tmp_path / "via_geneval.json")]) == 0
    direct = ["eval", "shapes", "--n", "9", "--seed", "4", "--skip-vqa", "--json", str(tmp_path / "direct.json")]
    assert main(direct) == 0
    via_geneval = json.loads((tmp_path / "via_geneval.json").read_text())["generation"]
    assert via_geneval == json.loads((tmp_path / "direct.json").read_text())["generation"]
    assert json.loads((layout / "00003" / "metadata.jsonl").read_text())["seed"] == 7  # seed + line index
    sidecar = json.loads((layout / "00003" / "samples" / "0000.json").read_text())
    assert sidecar["seed"] == 7 and sidecar["prompt"] == json.loads(metadata.read_text().splitlines()[3])["prompt"]

    capsys.readouterr()
    assert main(draw) == 0  # resumed: everything is there
    assert "9 already written, 0 to draw" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(layout / "00000" / "samples" / "0001.png")  # e.g. left by an -n 2 run
    assert main(draw) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 image(s) this run would not draw and GenEval's scorer would count" in err
    (layout / "00000" / "samples" / "0001.png").unlink()
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # two prompts swap folders
    assert main(draw) == 2
    assert "2 prompt folder(s) hold another metadata line than --metadata" in capsys.readouterr().err
