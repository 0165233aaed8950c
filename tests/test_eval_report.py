"""`harmon eval report`: measured results merged into a copy of a model card, apart from the paper's numbers, through
huggingface_hub's model-index API; the evaluators' own outputs it reads (GenEval's results.jsonl, DPG-Bench's results
.txt, `harmon eval fid|clipscore --json`), written here as tiny files; and `harmon push` keeping the merged results
when it renders a card again. Offline; only the last test loads a (tiny) model."""

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from harmon_model_cards import REPO_PLACEHOLDER, render_model_card, write_model_card
from harmon_pipelines.cli import CommandError
from harmon_pipelines.evaluation.cli_report import add_report_arguments, run_report
from harmon_pipelines.evaluation.report import (
    BEGIN_MARKER,
    END_MARKER,
    FORMAT,
    MEASURED_SOURCE_NAME,
    CardError,
    ResultsFileError,
    Run,
    measured_in_card,
    merge_results_into_card,
    read_results,
    shared_identifiers,
)
from harmon_pipelines.hub import card_for_repo, push_hub_folder, save_hub_folder


REPO_ROOT = Path(__file__).resolve().parents[1]
URL = "https://huggingface.co/org/harmon-0.5b"
PAPER_SOURCE = "Reported in the Harmon paper (Table "


def results_file(path: Path, metrics=(("overall", 0.6931), ("counting", 0.55)), **changes) -> Path:
    """A GenEval results file of the documented schema, with top-level `changes`."""
    data = {
        "format": FORMAT,
        "model": "org/harmon-0.5b",
        "date": "2025-06-01",
        "command": "harmon eval geneval --model org/harmon-0.5b --json geneval.json",
        "settings": {"guidance_scale": 3.0, "num_iter": 64},
        "results": [
            {
                "task": {"type": "text-to-image", "name": "Text-to-image generation"},
                "dataset": {"type": "geneval", "name": "GenEval"},
                "n": 553,
                "metrics": [{"type": kind, "name": f"GenEval {kind}", "value": value} for kind, value in metrics],
            }
        ],
        **changes,
    }
    path.write_text(json.dumps(data))
    return path


def fid_file(path: Path, value=7.5, date="2025-06-02") -> Path:
    data = {
        "format": FORMAT,
        "model": "org/harmon-0.5b",
        "date": date,
        "command": "harmon eval fid --dataset playgroundai/MJHQ-30K | tee fid.log",
        "settings": {"steps": 64, "note": "<b>-->"},
        "results": [
            {
                "task": {"type": "text-to-image"},
                "dataset": {"type": "playgroundai/MJHQ-30K", "name": "MJHQ-30K", "split": "test"},
                "n": 30000,
                "metrics": [{"type": "fid", "name": "FID (lower is better)", "value": value}],
            }
        ],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def paper_card(tmp_path_factory) -> str:
    """The standard card of a Harmon-0.5B export (the config's LLM width decides the size), paper numbers included."""
    folder = tmp_path_factory.mktemp("harmon-0.5b")
    config = json.loads((REPO_ROOT / "pipelines" / "default_model" / "config.json").read_text())
    config["text_config"]["hidden_size"] = 896
    (folder / "config.json").write_text(json.dumps(config))
    return str(render_model_card(folder, repo_id="org/harmon-0.5b"))


def model_index(card_text: str) -> list:
    return yaml.safe_load(card_text.split("---")[1])["model-index"]


def ours(card_text: str) -> dict:
    _, results = model_index_to_eval_results(model_index(card_text))
    return {
        (result.dataset_name, result.metric_type): result.metric_value
        for result in results
        if result.source_name == MEASURED_SOURCE_NAME
    }


def test_merge_keeps_the_paper_numbers_and_adds_ours_marked_measured(paper_card, tmp_path):
    results = read_results([results_file(tmp_path / "geneval.json")])
    merged = merge_results_into_card(paper_card, results, source_url=URL)

    before, after = model_index(paper_card), model_index(merged)
    paper_entries = before[0]["results"]
    assert after[0]["name"] == before[0]["name"]
    assert after[0]["results"][: len(paper_entries)] == paper_entries  # untouched, in their order
    assert all(entry["source"]["name"].startswith(PAPER_SOURCE) for entry in paper_entries)
    added = after[0]["results"][len(paper_entries) :]
    assert [entry["source"] for entry in added] == [{"url": URL, "name": MEASURED_SOURCE_NAME}]
    assert all("verified" not in metric for metric in added[0]["metrics"])  # the Hub's flag, not ours to set

    # The text: the paper's table stays as it was; ours is a section of its own, after the Evaluation section.
    text = ModelCard(merged).text
    start, end = text.index(BEGIN_MARKER), text.index(END_MARKER) + len(END_MARKER)
    assert text[:start] + text[end + 2 :] == ModelCard(paper_card).text
    assert text[end:].startswith("\n\n## Pipeline tag")
    section = text[start:end]
    assert "## Measured results" in section and "not numbers reported by the paper" in section
    assert "| Text-to-image generation | GenEval | GenEval overall | 0.6931 | 553 | 1 |" in section
    assert "1. 2025-06-01, model `org/harmon-0.5b`: `harmon eval geneval" in section
    assert "`guidance_scale=3.0`, `num_iter=64`" in section

    # huggingface_hub reads it back: the paper's 16 numbers with their sources, and ours with ours.
    data = ModelCard(merged).data
    assert len(data.eval_results) == 16 + 2
    assert ours(merged) == {("GenEval", "overall"): 0.6931, ("GenEval", "counting"): 0.55}
    paper = {
        (r.dataset_name, r.metric_type): r.metric_value
        for r in data.eval_results
        if r.source_name != MEASURED_SOURCE_NAME
    }
    assert paper[("GenEval", "overall")] == 0.71 and len(paper) == 16
    # The shared GenEval identifiers are what huggingface_hub would merge on a re-save: the command says so.
    assert shared_identifiers(merged) == ["GenEval (text-to-image)"]


def test_merging_is_idempotent_and_a_re_report_replaces_the_entry(paper_card, tmp_path):
    geneval = read_results([results_file(tmp_path / "geneval.json")])
    once = merge_results_into_card(paper_card, geneval, source_url=URL)
    assert merge_results_into_card(once, geneval) == once  # the card's source URL is reused

    # Another benchmark later: added, the earlier rows keep their run; then GenEval overall measured again.
    fid = read_results([fid_file(tmp_path / "fid.json")])
    twice = merge_results_into_card(once, fid)
    remeasured = read_results(
        [
            results_file(
                tmp_path / "again.json", metrics=(("overall", 0.7),), date="2025-07-01", command="harmon eval x"
            )
        ]
    )
    thrice = merge_results_into_card(twice, remeasured)
    assert ours(thrice) == {("GenEval", "overall"): 0.7, ("GenEval", "counting"): 0.55, ("MJHQ-30K", "fid"): 7.5}
    assert len(ModelCard(thrice).data.eval_results) == 16 + 3  # replaced, not duplicated
    assert thrice.count(BEGIN_MARKER) == 1 and thrice.count("## Measured results") == 1
    assert [(r.metric_type, r.value, r.run.date) for r in measured_in_card(thrice)] == [
        ("overall", 0.7, "2025-07-01"),
        ("counting", 0.55, "2025-06-01"),
        ("fid", 7.5, "2025-06-02"),
    ]
    text = ModelCard(thrice).text
    assert "| Text-to-image generation | GenEval | GenEval overall | 0.7 | 553 | 1 |" in text
    assert "| text-to-image | MJHQ-30K (test) | FID (lower is better) | 7.5 | 30000 | 3 |" in text
    assert (
        "3. 2025-06-02, model `org/harmon-0.5b`: `harmon eval fid --dataset playgroundai/MJHQ-30K | tee fid.log`"
        in text
    )
    assert measured_in_card(thrice)[2].run.settings == {"steps": 64, "note": "<b>-->"}  # kept inside its comment
    assert merge_results_into_card(thrice, remeasured) == thrice
    paper_entries = model_index(paper_card)[0]["results"]
    assert model_index(thrice)[0]["results"][: len(paper_entries)] == paper_entries


def test_card_without_metadata_gets_a_model_index_and_needs_a_source_url(tmp_path):
    results = read_results([results_file(tmp_path / "geneval.json")])
    with pytest.raises(CardError, match="--source-url"):
        merge_results_into_card("# A model\n\nSome text.\n", results)
    merged = merge_results_into_card("# A model\n\nSome text.\n", results, source_url=URL, model_name="a-model")
    assert merged.startswith("---\nmodel-index:\n- name: a-model\n")
    assert ModelCard(merged).text.startswith("# A model\n\nSome text.\n\n" + BEGIN_MARKER)
    assert ours(merged) == {("GenEval", "overall"): 0.6931, ("GenEval", "counting"): 0.55}
    assert shared_identifiers(merged) == []
    with pytest.raises(CardError, match="not --model-name 'other'"):
        merge_results_into_card(merged, results, model_name="other")
    broken = merged.replace("<!-- harmon-eval-report: end -->", "")
    with pytest.raises(CardError, match="markers are broken"):
        merge_results_into_card(broken, results)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    return parser


def test_report_writes_a_new_card_and_never_edits_the_input(paper_card, tmp_path, capsys):
    card = tmp_path / "README.md"
    card.write_text(paper_card)
    geneval = results_file(tmp_path / "geneval.json")
    output = tmp_path / "out" / "README.md"
    run_report(_parser().parse_args([str(geneval), "--card", str(card), "--output", str(output), "--source-url", URL]))
    assert card.read_text() == paper_card
    assert ours(output.read_text()) == {("GenEval", "overall"): 0.6931, ("GenEval", "counting"): 0.55}
    assert sorted(path.name for path in output.parent.iterdir()) == ["README.md"]  # no temporary file left
    assert "GenEval (text-to-image) share task and dataset identifiers" in capsys.readouterr().err

    os.symlink(card, tmp_path / "link.md")
    os.link(card, tmp_path / "hard.md")
    for same in (card, tmp_path / "link.md", tmp_path / "hard.md", tmp_path / "." / "README.md"):
        args = _parser().parse_args([str(geneval), "--card", str(card), "--output", str(same), "--source-url", URL])
        with pytest.raises(CommandError, match=r"^--output .* is --card .*not edited in place"):
            run_report(args)
    assert card.read_text() == paper_card
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(CommandError, match=r"bad\.json: not valid JSON"):
        run_report(_parser().parse_args([str(bad), "--card", str(card), "--output", str(tmp_path / "x.md")]))
    with pytest.raises(CommandError, match="RESULTS .*missing.json.*no such file"):
        run_report(_parser().parse_args(["missing.json", "--card", str(card), "--output", str(tmp_path / "x.md")]))
    assert not (tmp_path / "x.md").exists()


def _without(data: dict, *path):
    *parents, last = path
    for key in parents:
        data = data[key]
    del data[last]


@pytest.mark.parametrize(
    "edit, field, problem",
    [
        (lambda d: _without(d, "date"), "date", "missing"),
        (lambda d: _without(d, "model"), "model", "missing"),
        (lambda d: _without(d, "settings"), "settings", "missing"),
        (lambda d: _without(d, "results", 0, "metrics", 1, "value"), "results[0].metrics[1].value", "missing"),
        (lambda d: _without(d, "results", 0, "dataset", "name"), "results[0].dataset.name", "missing"),
        (lambda d: _without(d, "results", 0, "n"), "results[0].n", "missing"),
        (lambda d: d.update(format="other/1"), "format", "expected"),
        (lambda d: d.update(date="June 1st"), "date", "ISO 8601"),
        (lambda d: d.update(command=""), "command", "non-empty"),
        (lambda d: d.update(results=[]), "results", "empty"),
        (lambda d: d["results"][0]["metrics"][0].update(value="0.7"), "results[0].metrics[0].value", "finite number"),
        (lambda d: d["results"][0]["metrics"][0].update(value=True), "results[0].metrics[0].value", "finite number"),
        (lambda d: d["results"][0].update(n=0), "results[0].n", "integer >= 1"),
        (lambda d: d["results"][0]["metrics"][0].update(vaule=1), "results[0].metrics[0]", "unknown keys"),
        (lambda d: d["results"][0].update(task="text-to-image"), "results[0].task", "JSON object"),
    ],
)
def test_bad_results_files_are_rejected_naming_the_file_and_the_field(tmp_path, edit, field, problem):
    path = results_file(tmp_path / "geneval.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsFileError) as error:
        read_results([path])
    assert str(error.value).startswith(f"{path}: {field}: ") and problem in str(error.value)


def test_unreadable_duplicate_and_mixed_results_are_rejected(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": ')
    with pytest.raises(ResultsFileError, match=r"broken\.json: not valid JSON .* line 1"):
        read_results([path])
    path.write_text("[1]")
    with pytest.raises(ResultsFileError, match=r"broken\.json: the file: expected a JSON object, got an array"):
        read_results([path])
    a, b = results_file(tmp_path / "a.json"), results_file(tmp_path / "b.json", metrics=(("overall", 0.5),))
    with pytest.raises(ResultsFileError, match=r"b\.json: GenEval 'overall' .* also reported by .*a\.json"):
        read_results([a, b])
    other = results_file(tmp_path / "other.json", metrics=(("colors", 0.5),), model="org/other")
    with pytest.raises(ResultsFileError, match=r"other\.json: model: 'org/other' differs from 'org/harmon-0.5b'"):
        read_results([a, other])


def test_a_shapes_eval_file_takes_its_provenance_from_the_command(tmp_path):
    """`harmon eval shapes --json` output (here the demo card's committed input) records no model, date or command;
    merged into a copy of the demo card it gets a model-index, and the shipped card is left alone."""
    shapes = REPO_ROOT / "training" / "configs" / "shapes" / "card_inputs" / "eval.json"
    with pytest.raises(ResultsFileError, match=r"eval\.json: model: missing .*--run-model and --run-date"):
        read_results([shapes], {"command": "harmon eval shapes --n 540"})
    results = read_results([shapes], {"model": "harmon-shapes", "date": "2025-12-04", "command": "harmon eval shapes"})
    values = {(result.task_type, result.metric_type): result.value for result in results}
    assert values[("text-to-image", "overall")] == 0.887 and values[("image-text-to-text", "accuracy")] == 0.9759
    assert {result.n for result in results} == {540} and results[0].run.settings["seed"] == 0

    shipped = REPO_ROOT / "pipelines" / "default_model" / "README.md"
    before = shipped.read_text()
    output = tmp_path / "README.md"
    args = _parser().parse_args(
        [
            str(shapes),
            "--card",
            str(shipped),
            "--output",
            str(output),
            "--source-url",
            URL,
            "--run-model",
            "harmon-shapes",
        ]
        + ["--run-date", "2025-12-04", "--run-command", "harmon eval shapes --n 540 --json eval.json"]
    )
    run_report(args)
    assert shipped.read_text() == before
    card = ModelCard(output.read_text())
    assert card.data.model_name == "harmon-shapes" and len(card.data.eval_results) == 8
    assert card.text.startswith(ModelCard(before).text.rstrip("\n"))  # the section goes at the end


# ------------------------------------------------------------------------------ the evaluators' own outputs
RUN = {"model": "org/harmon-0.5b", "date": "2025-06-03", "command": "harmon eval geneval ...; evaluate_images.py"}
RUN_FLAGS = ["--run-model", RUN["model"], "--run-date", RUN["date"], "--run-command", RUN["command"]]


def geneval_jsonl(path: Path, tags_correct: dict, images_per_prompt: int = 2) -> Path:
    """GenEval's results.jsonl as evaluate_images.py writes it (pandas `to_json(orient="records", lines=True)`: one
    record per image, `metadata` a JSON string, '/' escaped), for `tags_correct` {tag: [correct, ...]}."""
    lines = []
    for tag, corrects in tags_correct.items():
        for index, correct in enumerate(corrects):
            prompt = f"a photo for {tag} #{index // images_per_prompt}"
            record = {
                "filename": f"runs/geneval/{tag}{index // images_per_prompt:03d}/samples/{index:04d}.png",
                "tag": tag,
                "prompt": prompt,
                "correct": correct,
                "reason": "" if correct else "expected a thing>=1, found 0",
                "metadata": json.dumps({"tag": tag, "include": [{"class": "thing", "count": 1}], "prompt": prompt}),
                "details": json.dumps({"thing": [[1.0, 2.0, 3.0, 4.0, 0.9]]}),
            }
            lines.append(json.dumps(record).replace("/", "\\/"))
    path.write_text("\n".join(lines) + "\n")
    return path


# Tasks of unequal sizes, so that the mean over tasks (GenEval's overall score) differs from the mean over images.
GENEVAL_CORRECT = {
    "single_object": [True, True, True, False],  # 0.75
    "two_object": [True, False],  # 0.5
    "counting": [False, False],  # 0.0
    "colors": [True, True, True, True, True, True],  # 1.0
    "position": [True, False],  # 0.5
    "color_attr": [False, True],  # 0.5
}


def test_geneval_results_jsonl_is_scored_as_summary_scores_does(tmp_path, paper_card):
    """summary_scores.py: a task's accuracy is the mean of `correct` over its images; the overall score is the
    unweighted mean of the task accuracies (not the mean over all images, nor per prompt first)."""
    path = geneval_jsonl(tmp_path / "results.jsonl", GENEVAL_CORRECT)
    results = read_results([path], RUN)
    values = {result.metric_type: result.value for result in results}
    tasks = [0.75, 0.5, 0.0, 1.0, 0.5, 0.5]
    assert values == {
        "overall": round(sum(tasks) / 6, 4),  # 0.5417; over images it would be 11 / 18 = 0.6111
        "single-object": 0.75,
        "two-objects": 0.5,
        "counting": 0.0,
        "colors": 1.0,
        "position": 0.5,
        "color-attribution": 0.5,
    }
    assert {result.metric_type: result.n for result in results} == {
        "overall": 18,
        "single-object": 4,
        "two-objects": 2,
        "counting": 2,
        "colors": 6,
        "position": 2,
        "color-attribution": 2,
    }
    assert {(result.task_type, result.dataset_type, result.dataset_name) for result in results} == {
        ("text-to-image", "geneval", "GenEval")
    }
    assert results[0].run == Run(**RUN, settings={"prompts": 9})
    # The paper's GenEval entries and ours share types, so the card shows them side by side.
    merged = merge_results_into_card(paper_card, results, source_url=URL)
    assert ours(merged)[("GenEval", "overall")] == 0.5417 and ours(merged)[("GenEval", "color-attribution")] == 0.5
    assert "| Text-to-image generation | GenEval | GenEval single object | 0.75 | 4 | 1 |" in merged

    # A one-line file is JSON as a whole: still GenEval's (and refused here for lacking five tasks).
    one = geneval_jsonl(tmp_path / "one.jsonl", {"counting": [True]})
    with pytest.raises(ResultsFileError, match=r"one\.jsonl: tag: no image of single_object, two_object, colors"):
        read_results([one], RUN)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda lines: lines[:-2], r"tag: no image of color_attr"),
        (lambda lines: lines + lines[-1:], r"line 19\.filename: .* also scored on line 18"),
        (lambda lines: [lines[0].replace('"correct": true', '"correct": 1')] + lines[1:], r"line 1\.correct: "),
        (lambda lines: [lines[0].replace('"single_object"', '"single"', 1)] + lines[1:], r"line 1\.tag: expected"),
        (lambda lines: lines[:3] + ["{broken"] + lines[3:], r"line 4: not valid JSON"),
        (lambda lines: lines[:3] + ['{"x": 1}'] + lines[3:], r"line 4: not a GenEval record"),
    ],
)
def test_bad_geneval_files_are_refused_naming_the_file_and_the_line(tmp_path, edit, message):
    path = geneval_jsonl(tmp_path / "results.jsonl", GENEVAL_CORRECT)
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(ResultsFileError, match=rf"^{re.escape(str(path))}: {message}"):
        read_results([path], RUN)


def dpg_txt(path: Path, grids=((1.0, 0.5, 0.75, 0.75, 0.75), (0.5, 0.5, 0.5, 0.5, 0.5)), score=None) -> Path:
    """A results file as compute_dpg_bench.py writes it with --res-path: a line per grid (path, 4 tile scores, their
    mean), then the summary it appends; `score` defaults to 100 x the mean of the grids' means."""
    lines = [
        f"/data/runs/dpg/grids/{index}.png, " + ", ".join(str(value) for value in grid)
        for index, grid in enumerate(grids)
    ]
    score = 100 * sum(grid[-1] for grid in grids) / len(grids) if score is None else score
    lines += [
        "Model: grids",
        "L1 category scores:",
        "\tglobal: 80.0",
        "\tentity: 70.12345678",
        "\tother: 50.0",
        "\tattribute: 66.66666666666667",
        "\trelation: 90.0",
        "L2 category scores:",
        "\tattribute - color: 66.66666666666667",
        "\tentity - whole: 70.12345678",
        "Image path: /data/runs/dpg/grids",
        "Save results to: /data/results/dpg.txt",
        f"DPG-Bench score: {score}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dpg_bench_results_txt_gives_the_score_and_its_l1_categories(tmp_path):
    results = read_results([dpg_txt(tmp_path / "dpg.txt")], RUN)
    assert [(result.metric_type, result.metric_name, result.value) for result in results] == [
        ("overall", "DPG-Bench score (0-100)", 62.5),
        ("entity", "DPG-Bench entity", 70.1235),
        ("attribute", "DPG-Bench attribute", 66.6667),
        ("relation", "DPG-Bench relation", 90.0),
        ("global", "DPG-Bench global", 80.0),
        ("other", "DPG-Bench other", 50.0),
    ]
    assert {(result.dataset_type, result.dataset_name, result.task_type, result.n) for result in results} == {
        ("dpg-bench", "DPG-Bench", "text-to-image", 2)  # n: the grids (prompts) scored
    }
    assert results[0].run.settings == {"images_per_prompt": 4}

    # Without the L1 block: the score alone.
    bare = tmp_path / "bare.txt"
    text = dpg_txt(bare).read_text()
    bare.write_text(text[: text.index("L1 category")] + text[text.index("Image path:") :])
    assert [result.metric_type for result in read_results([bare], RUN)] == ["overall"]

    # Grid lines that do not average to the score (two runs appended), no grid lines, two scores: refused.
    wrong = dpg_txt(tmp_path / "wrong.txt", score=70.0)
    with pytest.raises(ResultsFileError, match=r"wrong\.txt: DPG-Bench score: 70\.0 is not the mean of its 2 grid"):
        read_results([wrong], RUN)
    tail = tmp_path / "tail.txt"
    tail.write_text(text[text.index("Model:") :])
    with pytest.raises(ResultsFileError, match=r"tail\.txt: the file: no scored grid lines"):
        read_results([tail], RUN)
    twice = tmp_path / "twice.txt"
    twice.write_text(text + text)
    with pytest.raises(ResultsFileError, match=r"twice\.txt: DPG-Bench score: 2 'DPG-Bench score:' lines"):
        read_results([twice], RUN)


def raw_fid(path: Path, value=6.54321, n=30000) -> Path:
    """What `harmon eval fid --json` writes (image_metrics.fid_folders)."""
    data = {
        "metric": "fid",
        "value": value,
        "n": n,
        "n_reference": 30000,
        "generated": "runs/mjhq30k-0.5b",
        "reference": "mjhq30k_ref_512",
        "settings": {
            "feature_extractor": {"name": "inception-v3-compat", "features": 2048, "weights_sha256": "6726825d"},
            "image_size": [512, 512],
            "resize": None,
            "batch_size": 32,
            "device": "cuda",
        },
        "library": {"torchmetrics": "1.9.0", "torch-fidelity": "0.4.0", "torch": "2.6.0"},
    }
    path.write_text(json.dumps(data, indent=2))
    return path


def raw_clipscore(path: Path, value=31.23456) -> Path:
    """What `harmon eval clipscore --json` writes (image_metrics.clip_score_folder)."""
    data = {
        "metric": "clipscore",
        "value": value,
        "n": 30000,
        "images": "runs/coco30k-0.5b",
        "settings": {
            "clip": "clip-vit-large-patch14",
            "image_processor": "CLIPImageProcessor",
            "max_prompt_tokens": 77,
            "prompts_truncated": 0,
            "prompt_source": "sidecars",
            "batch_size": 32,
            "device": "cuda",
        },
        "library": {"torchmetrics": "1.9.0", "transformers": "5.18.0", "torch": "2.6.0"},
    }
    path.write_text(json.dumps(data))
    return path


def test_fid_and_clipscore_files_need_the_dataset_they_were_drawn_for(tmp_path, paper_card, capsys):
    fid, clip = raw_fid(tmp_path / "fid.json"), raw_clipscore(tmp_path / "clip.json")
    with pytest.raises(ResultsFileError, match=r"fid\.json: dataset: missing .*--dataset: mscoco-30k, mjhq-30k"):
        read_results([fid], RUN)
    with pytest.raises(ResultsFileError, match=r"clip\.json: model: missing .*--run-model and --run-date and --run"):
        read_results([clip], {}, dataset="mscoco-30k")
    [mjhq] = read_results([fid], RUN, dataset="mjhq-30k")  # MJHQ-30K: its Hub dataset id
    assert (mjhq.task_type, mjhq.dataset_type, mjhq.dataset_name, mjhq.metric_type, mjhq.value, mjhq.n) == (
        "text-to-image",
        "playgroundai/MJHQ-30K",
        "MJHQ-30K",
        "fid",
        6.5432,
        30000,
    )
    assert mjhq.run.settings["n_reference"] == 30000 and mjhq.run.settings["library"]["torch-fidelity"] == "0.4.0"
    assert mjhq.run.settings["feature_extractor"]["features"] == 2048 and mjhq.run.model == RUN["model"]
    assert read_results([fid], RUN, dataset="playgroundai/MJHQ-30K")[0] == mjhq
    coco = read_results([fid, clip], RUN, dataset="mscoco-30k")
    assert [(r.dataset_type, r.dataset_name, r.metric_type, r.metric_name, r.value) for r in coco] == [
        ("mscoco-30k", "MSCOCO-30K", "fid", "FID (lower is better)", 6.5432),
        ("mscoco-30k", "MSCOCO-30K", "clip_score", "CLIPScore (100 x CLIP cosine)", 31.2346),
    ]
    [other] = read_results([clip], RUN, dataset="my-org/my-prompts")
    assert (other.dataset_type, other.dataset_name) == ("my-org/my-prompts", "my-prompts")
    for bad in ("MJHQ", "coco", "a/b/c", "org/na me", ""):
        with pytest.raises(ValueError, match="expected one of mscoco-30k, mjhq-30k, geneval, dpg-bench, or a Hub"):
            read_results([fid], RUN, dataset=bad)
    geneval = geneval_jsonl(tmp_path / "results.jsonl", GENEVAL_CORRECT)
    with pytest.raises(ResultsFileError, match=r"a dataset \('mjhq-30k', --dataset\) is given, but no results file"):
        read_results([geneval], RUN, dataset="mjhq-30k")

    # The command: FID, CLIPScore and GenEval in one call, then MJHQ's FID into that card (one --dataset a call).
    card, first, second = tmp_path / "README.md", tmp_path / "first.md", tmp_path / "second.md"
    card.write_text(paper_card)
    common = ["--source-url", URL, *RUN_FLAGS]
    run_report(
        _parser().parse_args(
            [
                str(fid),
                str(clip),
                str(geneval),
                "--card",
                str(card),
                "--output",
                str(first),
                "--dataset",
                "mscoco-30k",
                *common,
            ]
        )
    )
    run_report(
        _parser().parse_args(
            [str(fid), "--card", str(first), "--output", str(second), "--dataset", "mjhq-30k", *common]
        )
    )
    assert ours(second.read_text()) == {
        ("MSCOCO-30K", "fid"): 6.5432,
        ("MSCOCO-30K", "clip_score"): 31.2346,
        ("MJHQ-30K", "fid"): 6.5432,
        **{("GenEval", r.metric_type): r.value for r in read_results([geneval], RUN)},
    }
    assert len(ModelCard(second.read_text()).data.eval_results) == 16 + 10
    assert "wrote " in capsys.readouterr().err
    for dataset, message in (("coco", "^--dataset: dataset 'coco': expected one of"), ("mjhq-30k", "a dataset")):
        args = [str(geneval), "--card", str(card), "--output", str(tmp_path / "x.md"), "--dataset", dataset, *common]
        with pytest.raises(CommandError, match=message):
            run_report(_parser().parse_args(args))
    assert not (tmp_path / "x.md").exists()


def test_a_real_fid_json_is_read(tmp_path):
    """What `fid_folders` returns today (with a stand-in feature extractor), written as `harmon eval fid --json`
    writes it, reads as a FID: the report follows the evaluator's format."""
    pytest.importorskip("torchmetrics")
    import numpy as np
    import torch
    from PIL import Image

    from harmon_pipelines.evaluation.image_metrics import fid_folders
    from modeling_harmon.atomic_files import write_json

    class MeanColour(torch.nn.Module):
        num_features = 2

        def forward(self, images):
            return images.double().mean(dim=(2, 3))[:, :2] / 255

    rng = np.random.default_rng(0)
    for name in ("generated", "reference"):
        (tmp_path / name).mkdir()
        for index in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name / f"{index}.png")
    result = fid_folders(tmp_path / "generated", tmp_path / "reference", feature_extractor=MeanColour())
    write_json(result, tmp_path / "fid.json")
    [fid] = read_results([tmp_path / "fid.json"], RUN, dataset="mjhq-30k")
    assert (fid.metric_type, fid.value, fid.n) == ("fid", round(result["value"], 4), 4)
    assert fid.run.settings == {**result["settings"], "n_reference": 4, "library": result["library"]}


def test_a_file_of_no_known_kind_is_refused_naming_it(tmp_path):
    for name, text, message in (
        ("other.json", '{"score": 0.7}', r'a JSON object without "format" that is no other kind'),
        ("notes.txt", "GenEval was 0.7\n", r"not valid JSON .*nor another kind of results file"),
        ("empty.jsonl", "", r"not valid JSON"),
    ):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ResultsFileError, match=rf"^{re.escape(str(path))}: {message}"):
            read_results([path], RUN)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("DPG-Bench score: 80 \xe9".encode("latin-1"))
    with pytest.raises(ResultsFileError, match=r"latin\.txt: not UTF-8 text"):
        read_results([latin], RUN)


# -------------------------------------------------------------------------------- harmon push keeps them
def _placeholder_export(folder: Path, hidden_size: int = 896) -> Path:
    """An exported folder whose card was rendered before its repo was known (what `harmon export` writes)."""
    folder.mkdir()
    config = json.loads((REPO_ROOT / "pipelines" / "default_model" / "config.json").read_text())
    config["text_config"]["hidden_size"] = hidden_size
    (folder / "config.json").write_text(json.dumps(config))
    write_model_card(folder)
    assert REPO_PLACEHOLDER in (folder / "README.md").read_text()
    return folder


def test_push_renders_the_card_for_its_repo_and_keeps_the_measured_results(tmp_path, paper_card):
    folder = _placeholder_export(tmp_path / "export")
    results = read_results([results_file(tmp_path / "geneval.json"), fid_file(tmp_path / "fid.json")])
    placeholder_url = f"https://huggingface.co/{REPO_PLACEHOLDER}"
    merged = merge_results_into_card((folder / "README.md").read_text(), results, source_url=placeholder_url)
    (folder / "README.md").write_text(merged)

    published = card_for_repo(folder, "org/harmon-0.5b")
    # Exactly the card rendered for the repo with the same results merged in: the snippets name the repo, the
    # paper's entries are the re-rendered ones, ours keep their values, runs and (repo-filled) source URL.
    assert published == merge_results_into_card(paper_card, results, source_url=URL)
    assert REPO_PLACEHOLDER not in published and "org/harmon-0.5b" in ModelCard(published).text
    assert measured_in_card(published) == measured_in_card(merged)
    assert ours(published) == ours(merged) and len(ModelCard(published).data.eval_results) == 16 + 3

    # A card that names its repo is published as it is.
    (folder / "README.md").write_text(published)
    assert card_for_repo(folder, "org/harmon-0.5b") is None
    # A card whose measured section cannot be read is refused rather than published without it.
    (folder / "README.md").write_text(merged.replace(END_MARKER, ""))
    with pytest.raises(ValueError, match=r"measured results in it cannot be carried over .*markers are broken"):
        card_for_repo(folder, "org/harmon-0.5b")
    # A card without measured results: only rendered again.
    clean = _placeholder_export(tmp_path / "clean")
    assert card_for_repo(clean, "org/harmon-0.5b") == paper_card


def test_push_uploads_the_merged_results_of_a_tiny_export(tmp_path, tiny_model, tokenizer):
    """End to end through `push_hub_folder` (at the HfApi boundary): a card without a model-index of its own (no
    released size) keeps the model-index name its measured results were merged under."""
    folder = save_hub_folder(tmp_path / "tiny-harmon", tiny_model, tokenizer)
    card = (folder / "README.md").read_text()
    results = read_results([results_file(tmp_path / "geneval.json")])
    merged = merge_results_into_card(card, results, source_url=URL, model_name="tiny-harmon")
    (folder / "README.md").write_text(merged)

    class Api:
        def create_repo(self, **kwargs):
            pass

        def upload_folder(self, **kwargs):
            self.card = (Path(kwargs["folder_path"]) / "README.md").read_text()
            return "commit-info"

    api = Api()
    assert push_hub_folder(folder, "me/tiny-harmon", api=api) == "commit-info"
    assert REPO_PLACEHOLDER not in api.card and "me/tiny-harmon" in api.card
    assert ours(api.card) == ours(merged) and model_index(api.card)[0]["name"] == "tiny-harmon"
    assert measured_in_card(api.card) == measured_in_card(merged)
    assert (folder / "README.md").read_text() == merged  # the folder itself is not changed


def test_local_paths_in_a_metric_file_reach_the_card_as_file_names_only():
    from harmon_pipelines.evaluation.report import _without_local_paths

    settings = {
        "extractor": {"weights": "/home/me/secret/weights-inception-2015-12-05-6726825d.pth", "features": 2048},
        "folders": ["/data/run1/images", "C:\\Users\\me\\ref"],
        "resize": "bilinear",
    }
    assert _without_local_paths(settings) == {
        "extractor": {"weights": "weights-inception-2015-12-05-6726825d.pth", "features": 2048},
        "folders": ["images", "ref"],
        "resize": "bilinear",
    }
