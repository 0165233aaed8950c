"""`harmon eval report`: measured results merged into a copy of a model card, apart from the paper's numbers, through
huggingface_hub's model-index API; offline and fast (no model is loaded)."""

import argparse
import json
import os
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from harmon_model_cards import render_model_card
from harmon_pipelines.cli import CommandError
from harmon_pipelines.evaluation.cli_report import add_report_arguments, run_report
from harmon_pipelines.evaluation.report import (
    BEGIN_MARKER,
    END_MARKER,
    FORMAT,
    MEASURED_SOURCE_NAME,
    CardError,
    ResultsFileError,
    measured_in_card,
    merge_results_into_card,
    read_results,
    shared_identifiers,
)


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
    assert values[("text-to-image", "overall")] == 0.8778 and values[("image-text-to-text", "accuracy")] == 0.9241
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
