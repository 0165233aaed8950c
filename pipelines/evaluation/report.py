"""Merge measured evaluation results into a model card's `model-index`, apart from the numbers a paper reports.

    harmon eval report geneval.json fid.json --card README.md --output README.new.md --source-url URL
    harmon eval report results.jsonl --card README.md --output README.new.md --run-model M --run-date D --run-command C

A card may already list numbers that were not measured with this code (our cards list the paper's, each with the
source "Reported in the Harmon paper (Table N)"); those entries are left exactly as they are. Ours are written through
huggingface_hub's `EvalResult` / `eval_results_to_model_index` with the source name `MEASURED_SOURCE_NAME`, and the
card text gets a "Measured results" section (between `BEGIN_MARKER` and `END_MARKER`) with, for each number, the run
that produced it: date, model, command and settings. `verified` is left unset: the Hub sets it for its own evaluation
service only. Merging is idempotent: a benchmark and metric reported again replaces the earlier entry (a card
describes one model, so the key is task type, dataset type, config, split, revision and metric type).

Results file (JSON, UTF-8), one run of an evaluator:

    {
      "format": "harmon-eval-results/1",
      "model": "org/harmon-0.5b",             # what was evaluated: a Hub repo id or a folder
      "date": "2025-06-01",                   # ISO 8601 date or date-time of the run
      "command": "harmon eval geneval ...",   # the command that measured it
      "settings": {"guidance_scale": 3.0},    # sampling and benchmark settings (an object; may be empty)
      "results": [                            # one entry per task and dataset
        {
          "task": {"type": "text-to-image", "name": "Text-to-image generation"},  # name optional
          "dataset": {"type": "geneval", "name": "GenEval"},  # optional: "config", "split", "revision"
          "n": 553,                           # items scored
          "metrics": [
            {"type": "overall", "name": "GenEval overall", "value": 0.71}  # name optional; optional "n"
          ]
        }
      ]
    }

Identifiers (types, names, config, split, revision, model, command) are non-empty one-line strings; values are finite
numbers; counts are integers >= 1. Other keys are refused, so a misspelt one is not silently dropped.

The evaluators' own outputs are read too, each recognised by its content (a file of none of these kinds is refused,
naming it). None of them records the model, the date or the command, so those come from `provenance`
(`--run-model`, `--run-date`, `--run-command`); what a file records of its settings becomes the run's settings.

- `harmon eval shapes --json` (ShapesEval): its generation categories and its VQA accuracy; the seed and settings.
- `harmon eval fid --json` and `harmon eval clipscore --json`: one number each. They do not record which benchmark
  the images were drawn for, so `dataset` (`--dataset`, one for all such files of a call; refused when none is
  given) names it: one of `KNOWN_DATASETS` (`mscoco-30k`, `mjhq-30k`, `geneval`, `dpg-bench`) or a Hub dataset id
  `ORG/NAME`. Settings: the file's `settings` plus its `library` versions (and, for FID, `n_reference`).
- GenEval's `results.jsonl` (its `evaluation/evaluate_images.py`: one JSON record per image with `filename`, `tag`,
  `prompt`, `correct`, ...), scored as its `evaluation/summary_scores.py` does: a task's accuracy is the mean of
  `correct` over the images of that tag, and the overall score is the unweighted mean of the task accuracies (not
  the mean over images, and not averaged per prompt first). All six tags must be there (the overall score of a subset
  is not GenEval's) and each image once. n: images (per task: that task's images); settings: the number of prompts.
- DPG-Bench's results `.txt` (ELLA's `dpg_bench/compute_dpg_bench.py --res-path`): one line per scored grid
  (`PATH, tile scores..., mean`), then `L1 category scores:` / `L2 category scores:` blocks and the last line
  `DPG-Bench score: S` (0-100: 100 x the mean over grids). Reported: S and the L1 categories (0-100, as printed),
  with n = the grids scored; the grid lines must average to S (a file appended by two runs does not).

Values computed or read from those outputs are rounded to 4 decimals.

Naming (Hub `model-index` conventions: a metric type is a metric id, a dataset type is the Hub dataset id where one
exists). Task: `text-to-image` ("Text-to-image generation"), as the paper entries of our cards (ShapesEval VQA:
`image-text-to-text`).

- FID: dataset `mscoco-30k` (MSCOCO-30K), `playgroundai/MJHQ-30K` (MJHQ-30K), ...; metric `fid` ("FID (lower is
  better)", as the paper entries);
- CLIPScore: dataset as FID; metric `clip_score` ("CLIPScore (100 x CLIP cosine)");
- GenEval: dataset `geneval` (GenEval); metrics `overall`, `single-object`, `two-objects`, `counting`, `colors`,
  `position`, `color-attribution` ("GenEval overall", "GenEval single object", ...), as the paper entries;
- DPG-Bench: dataset `dpg-bench` (DPG-Bench); metrics `overall` ("DPG-Bench score (0-100)") and the L1 categories'
  slugs `entity`, `attribute`, `relation`, `global`, `other` ("DPG-Bench entity", ...);
- ShapesEval: dataset `shapes-eval` (ShapesEval); metrics as GenEval's, and `accuracy` for its VQA.

MJHQ-30K is on the Hub as `playgroundai/MJHQ-30K`, hence its type; MSCOCO-30K (a 30K subset whose sampling varies
between papers), GenEval and DPG-Bench have no Hub dataset of their own, so they keep the slugs our cards' paper
entries use (the paper's MJHQ-30K entries say `mjhq-30k`: the measured one stays a separate row). A benchmark with
categories reports each as its own metric type, the category's slug, as the paper's GenEval entries do (a
`model-index` entry has one value per metric type, so six GenEval accuracies cannot all be `accuracy`); the metric
names say what the numbers are.

Caveat of huggingface_hub (2.4): `ModelCardData` groups eval results by task and dataset identifiers and gives each
group the source of its first member, so loading such a card with `ModelCard` and saving it again would credit our
numbers for a benchmark the paper also reports to the paper. This module therefore edits the card's raw metadata
(`RepoCard`), keeping our entries apart; rerun `harmon eval report` rather than re-saving a card through
`ModelCardData`.
"""

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePath, PureWindowsPath

import yaml
from huggingface_hub import EvalResult, ModelCard, RepoCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results


FORMAT = "harmon-eval-results/1"
MEASURED_SOURCE_NAME = "Measured with harmon-hf (harmon eval), self-reported"
BEGIN_MARKER = "<!-- harmon-eval-report: begin (generated: rerun `harmon eval report` instead of editing) -->"
END_MARKER = "<!-- harmon-eval-report: end -->"
DATA_OPEN = "<!-- harmon-eval-report: data"
SECTION_HEADING = "## Measured results"
# The card section the measured one follows (the templates in model_cards/ put the paper's numbers there).
AFTER_HEADING = "## Evaluation"

_TOP_KEYS = {"format", "model", "date", "command", "settings", "results"}
_RESULT_KEYS = {"task", "dataset", "n", "metrics"}
_TASK_KEYS = {"type", "name"}
_DATASET_KEYS = {"type", "name", "config", "split", "revision"}
_METRIC_KEYS = {"type", "name", "value", "n"}
_PROVENANCE_KEYS = ("model", "date", "command")

# GenEval's tags (its prompts' "tag", the tasks of summary_scores.py) -> metric type and name, as the paper's entries.
_GENEVAL_TAGS = {
    "single_object": ("single-object", "single object"),
    "two_object": ("two-objects", "two objects"),
    "counting": ("counting", "counting"),
    "colors": ("colors", "colors"),
    "position": ("position", "position"),
    "color_attr": ("color-attribution", "color attribution"),
}
# ShapesEval's generation categories (training/shapes/evaluation.py) -> metric type and name, as the paper's GenEval.
_SHAPES_CATEGORIES = {"overall": ("overall", "overall"), **_GENEVAL_TAGS}

# `--dataset` of a `harmon eval fid|clipscore --json` file -> (dataset type, dataset name); else a Hub id ORG/NAME.
KNOWN_DATASETS = {
    "mscoco-30k": ("mscoco-30k", "MSCOCO-30K"),
    "mjhq-30k": ("playgroundai/MJHQ-30K", "MJHQ-30K"),
    "geneval": ("geneval", "GenEval"),
    "dpg-bench": ("dpg-bench", "DPG-Bench"),
}
_TEXT_TO_IMAGE = {"type": "text-to-image", "name": "Text-to-image generation"}
# What `harmon_pipelines.evaluation.image_metrics` writes as "metric" -> metric type, name, and what the file is.
_IMAGE_METRICS = {
    "fid": ("fid", "FID (lower is better)", "`harmon eval fid --json` file"),
    "clipscore": ("clip_score", "CLIPScore (100 x CLIP cosine)", "`harmon eval clipscore --json` file"),
}
_GENEVAL_KEYS = {"filename", "tag", "correct"}  # of every record evaluate_images.py writes (among others)
_DPG_SCORE = re.compile(r"^DPG-Bench score: (\S+)\s*$", re.MULTILINE)
# DPG-Bench's L1 categories in the order the paper tables list them (others follow, sorted).
_DPG_L1_ORDER = ("entity", "attribute", "relation", "global", "other")
KINDS = (
    f"{FORMAT} JSON, `harmon eval shapes|fid|clipscore --json` output, GenEval's results.jsonl or DPG-Bench's "
    "results .txt"
)


class ResultsFileError(ValueError):
    """A results file that cannot be read as the schema says: the message names the file and the field."""


class CardError(ValueError):
    """A card (or merge request) that cannot take measured results: the message says why."""


@dataclass(frozen=True)
class Run:
    """Where a number comes from: what was measured, when, how."""

    model: str
    date: str
    command: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MeasuredResult:
    """One measured number (a metric of a task on a dataset) with its run; `origin` names its file for messages."""

    task_type: str
    dataset_type: str
    dataset_name: str
    metric_type: str
    value: float
    n: int | None = None
    task_name: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None
    dataset_revision: str | None = None
    metric_name: str | None = None
    run: Run | None = None
    origin: str = ""

    @property
    def key(self) -> tuple:
        """What a re-report replaces: the Hub's task-and-dataset identifier plus the metric type."""
        return (
            self.task_type,
            self.dataset_type,
            self.dataset_config,
            self.dataset_split,
            self.dataset_revision,
            self.metric_type,
        )

    def eval_result(self, source_url: str) -> EvalResult:
        return EvalResult(
            task_type=self.task_type,
            task_name=self.task_name,
            dataset_type=self.dataset_type,
            dataset_name=self.dataset_name,
            dataset_config=self.dataset_config,
            dataset_split=self.dataset_split,
            dataset_revision=self.dataset_revision,
            metric_type=self.metric_type,
            metric_name=self.metric_name,
            metric_value=self.value,
            source_name=MEASURED_SOURCE_NAME,
            source_url=source_url,
        )

    def record(self) -> dict:
        """The entry stored in the card's hidden data block (what the section is rebuilt from next time)."""
        dataset = {"type": self.dataset_type, "name": self.dataset_name}
        for name in ("config", "split", "revision"):
            if getattr(self, f"dataset_{name}") is not None:
                dataset[name] = getattr(self, f"dataset_{name}")
        entry = {
            "task": {"type": self.task_type, **({"name": self.task_name} if self.task_name else {})},
            "dataset": dataset,
            "metric": {"type": self.metric_type, **({"name": self.metric_name} if self.metric_name else {})},
            "value": self.value,
            "n": self.n,
        }
        if self.run is not None:
            entry["run"] = {
                "model": self.run.model,
                "date": self.run.date,
                "command": self.run.command,
                "settings": self.run.settings,
            }
        return entry


# ------------------------------------------------------------------------------------------------ reading
class _Fields:
    """Typed field access that names the file and the field path in every error."""

    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, where: str, problem: str):
        raise ResultsFileError(f"{self.origin}: {where}: {problem}")

    def mapping(self, value, where: str, allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a JSON object, got {_kind(value)}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            self.fail(where, f"unknown keys {unknown}; allowed: {sorted(allowed)}")
        return value

    def text(self, parent: dict, key: str, where: str, required: bool = True) -> str | None:
        path = f"{where}.{key}" if where else key
        if key not in parent or parent[key] is None:
            if required:
                self.fail(path, "missing (required)")
            return None
        value = parent[key]
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
            self.fail(path, f"expected a non-empty one-line string, got {json.dumps(value)}")
        return value

    def count(self, parent: dict, key: str, where: str, required: bool = True) -> int | None:
        path = f"{where}.{key}" if where else key
        if key not in parent:
            if required:
                self.fail(path, "missing (required)")
            return None
        value = parent[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(path, f"expected an integer >= 1, got {json.dumps(value)}")
        return value

    def number(self, parent: dict, key: str, where: str) -> float:
        path = f"{where}.{key}" if where else key
        if key not in parent:
            self.fail(path, "missing (required)")
        value = parent[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {json.dumps(value)}")
        return value

    def when(self, parent: dict, key: str) -> str:
        value = self.text(parent, key, "")
        try:
            (date.fromisoformat if len(value) == 10 else datetime.fromisoformat)(value)
        except ValueError:
            self.fail(key, f"expected an ISO 8601 date (YYYY-MM-DD) or date-time, got {json.dumps(value)}")
        return value


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _parse_results(data, origin: str) -> list[MeasuredResult]:
    fields = _Fields(origin)
    fields.mapping(data, "the file", _TOP_KEYS)
    if data.get("format") != FORMAT:
        fields.fail("format", f"expected {json.dumps(FORMAT)}, got {json.dumps(data.get('format'))}")
    model, command = fields.text(data, "model", ""), fields.text(data, "command", "")
    when = fields.when(data, "date")
    if "settings" not in data:
        fields.fail("settings", "missing (required; {} when there are none)")
    settings = data["settings"]
    if not isinstance(settings, dict):
        fields.fail("settings", f"expected a JSON object, got {_kind(settings)}")
    run = Run(model=model, date=when, command=command, settings=settings)
    if not isinstance(data.get("results"), list) or not data["results"]:
        fields.fail("results", "missing or empty (a non-empty array is required)")
    measured = []
    for i, entry in enumerate(data["results"]):
        where = f"results[{i}]"
        fields.mapping(entry, where, _RESULT_KEYS)
        task = fields.mapping(entry.get("task"), f"{where}.task", _TASK_KEYS)
        dataset = fields.mapping(entry.get("dataset"), f"{where}.dataset", _DATASET_KEYS)
        n = fields.count(entry, "n", where)
        if not isinstance(entry.get("metrics"), list) or not entry["metrics"]:
            fields.fail(f"{where}.metrics", "missing or empty (a non-empty array is required)")
        for j, metric in enumerate(entry["metrics"]):
            at = f"{where}.metrics[{j}]"
            fields.mapping(metric, at, _METRIC_KEYS)
            metric_n = fields.count(metric, "n", at, required=False)
            measured.append(
                MeasuredResult(
                    task_type=fields.text(task, "type", f"{where}.task"),
                    task_name=fields.text(task, "name", f"{where}.task", required=False),
                    dataset_type=fields.text(dataset, "type", f"{where}.dataset"),
                    dataset_name=fields.text(dataset, "name", f"{where}.dataset"),
                    dataset_config=fields.text(dataset, "config", f"{where}.dataset", required=False),
                    dataset_split=fields.text(dataset, "split", f"{where}.dataset", required=False),
                    dataset_revision=fields.text(dataset, "revision", f"{where}.dataset", required=False),
                    metric_type=fields.text(metric, "type", at),
                    metric_name=fields.text(metric, "name", at, required=False),
                    value=fields.number(metric, "value", at),
                    n=metric_n or n,
                    run=run,
                    origin=origin,
                )
            )
    return measured


def is_shapes_eval(data) -> bool:
    """Whether `data` is what `harmon eval shapes --json` writes for text-to-image and VQA."""
    return (
        isinstance(data, dict) and "format" not in data and {"n", "seed", "settings", "generation", "vqa"} <= set(data)
    )


def shapes_eval_results(data: dict, model: str, date: str, command: str) -> dict:
    """A ShapesEval file (`harmon eval shapes --json`) in the results schema: its generation categories (as GenEval's)
    and its VQA accuracy, rounded to 4 decimals, with the seed among the settings."""
    results = []
    generation, vqa = data.get("generation") or {}, data.get("vqa") or {}
    metrics = [
        {"type": kind, "name": f"ShapesEval {name}", "value": round(float(generation[key]), 4)}
        for key, (kind, name) in _SHAPES_CATEGORIES.items()
        if generation.get(key) is not None
    ]
    if metrics:
        task = {"type": "text-to-image", "name": "Text-to-image generation"}
        results.append(
            {
                "task": task,
                "dataset": {"type": "shapes-eval", "name": "ShapesEval"},
                "n": data["n"],
                "metrics": metrics,
            }
        )
    if vqa.get("accuracy") is not None:
        results.append(
            {
                "task": {"type": "image-text-to-text", "name": "Multimodal understanding"},
                "dataset": {"type": "shapes-eval", "name": "ShapesEval"},
                "n": data["n"],
                "metrics": [
                    {"type": "accuracy", "name": "ShapesEval VQA accuracy", "value": round(float(vqa["accuracy"]), 4)}
                ],
            }
        )
    return {
        "format": FORMAT,
        "model": model,
        "date": date,
        "command": command,
        "settings": {"seed": data["seed"], **data["settings"]},
        "results": results,
    }


def dataset_identifier(dataset: str) -> tuple[str, str]:
    """The (dataset type, dataset name) that `dataset` (`--dataset`) names: a key of `KNOWN_DATASETS`, or a Hub
    dataset id ORG/NAME (named by its NAME, or its known name). Raises `ValueError` for anything else."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if dataset in KNOWN_DATASETS:
        return KNOWN_DATASETS[dataset]
    known = {kind: name for kind, name in KNOWN_DATASETS.values()}
    if isinstance(dataset, str) and dataset.count("/") == 1:
        try:
            validate_repo_id(dataset)
            return dataset, known.get(dataset, dataset.split("/")[1])
        except HFValidationError:
            pass
    raise ValueError(f"dataset {dataset!r}: expected one of {', '.join(KNOWN_DATASETS)}, or a Hub dataset id ORG/NAME")


def _run(settings: dict, model: str, date: str, command: str, results: list) -> dict:
    """A results file of the schema: one run."""
    return {
        "format": FORMAT,
        "model": model,
        "date": date,
        "command": command,
        "settings": settings,
        "results": results,
    }


def _without_local_paths(value):
    """`value` with every absolute path (a local weights file, this machine's folders) cut to its file name: a card
    is public, and a path says nothing to its readers (the weights' SHA-256 beside it identifies them)."""
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    if isinstance(value, str) and (value.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", value)):
        return PurePath(value).name if "\\" not in value else PureWindowsPath(value).name
    return value


def image_metric_results(data: dict, dataset: str, model: str, date: str, command: str, origin: str = "") -> dict:
    """A `harmon eval fid --json` or `harmon eval clipscore --json` file in the results schema, for the benchmark
    `dataset` names ([`dataset_identifier`]); the value rounded to 4 decimals, the file's settings and library
    versions (and FID's reference count) as the run's settings."""
    fields = _Fields(origin)
    metric_type, metric_name, _ = _IMAGE_METRICS[data["metric"]]
    value, n = fields.number(data, "value", ""), fields.count(data, "n", "")
    if not isinstance(data["settings"], dict):
        fields.fail("settings", f"expected a JSON object, got {_kind(data['settings'])}")
    settings = _without_local_paths(data["settings"])
    if data.get("n_reference") is not None:
        settings["n_reference"] = fields.count(data, "n_reference", "")
    if data.get("library") is not None:
        if not isinstance(data["library"], dict):
            fields.fail("library", f"expected a JSON object, got {_kind(data['library'])}")
        settings["library"] = data["library"]
    dataset_type, dataset_name = dataset_identifier(dataset)
    result = {
        "task": dict(_TEXT_TO_IMAGE),
        "dataset": {"type": dataset_type, "name": dataset_name},
        "n": n,
        "metrics": [{"type": metric_type, "name": metric_name, "value": round(float(value), 4)}],
    }
    return _run(settings, model, date, command, [result])


def _geneval_records(text: str, origin: str) -> list[dict] | None:
    """The records of GenEval's results.jsonl in `text`, checked; None when its first line is not such a record."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return None
    try:
        first = json.loads(lines[0][1])
    except json.JSONDecodeError:
        return None
    if not isinstance(first, dict) or "format" in first or not _GENEVAL_KEYS <= set(first):
        return None
    fields = _Fields(origin)
    records, seen = [], {}
    for number, line in lines:
        where = f"line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            fields.fail(where, f"not valid JSON ({error.msg} at column {error.colno})")
        if not isinstance(record, dict) or not _GENEVAL_KEYS <= set(record):
            fields.fail(where, f"not a GenEval record (an object with {', '.join(sorted(_GENEVAL_KEYS))})")
        if record["tag"] not in _GENEVAL_TAGS:
            fields.fail(f"{where}.tag", f"expected one of {', '.join(_GENEVAL_TAGS)}, got {json.dumps(record['tag'])}")
        if not isinstance(record["correct"], bool):
            fields.fail(f"{where}.correct", f"expected true or false, got {json.dumps(record['correct'])}")
        filename = record["filename"]
        if not isinstance(filename, str) or not filename:
            fields.fail(f"{where}.filename", f"expected a non-empty string, got {json.dumps(filename)}")
        if filename in seen:
            fields.fail(
                f"{where}.filename",
                f"{json.dumps(filename)} is also scored on line {seen[filename]}; give a file of one scoring run",
            )
        seen[filename] = number
        records.append(record)
    return records


def geneval_results(records: Sequence[dict], model: str, date: str, command: str, origin: str = "") -> dict:
    """GenEval's per-image records (its results.jsonl) in the results schema, scored as its summary_scores.py scores
    them: each task (tag) the mean of `correct` over its images, overall the unweighted mean of the six tasks."""
    by_tag: dict[str, list[bool]] = {tag: [] for tag in _GENEVAL_TAGS}
    for record in records:
        by_tag[record["tag"]].append(record["correct"])
    missing = [tag for tag, correct in by_tag.items() if not correct]
    if missing:
        raise ResultsFileError(
            f"{origin}: tag: no image of {', '.join(missing)}; GenEval's overall score is the mean of all six tasks "
            f"({', '.join(_GENEVAL_TAGS)}), so score every prompt of evaluation_metadata.jsonl"
        )
    accuracy = {tag: sum(correct) / len(correct) for tag, correct in by_tag.items()}
    metrics = [
        {"type": "overall", "name": "GenEval overall", "value": round(sum(accuracy.values()) / len(accuracy), 4)}
    ]
    for tag, (kind, name) in _GENEVAL_TAGS.items():
        metrics.append(
            {"type": kind, "name": f"GenEval {name}", "value": round(accuracy[tag], 4), "n": len(by_tag[tag])}
        )
    prompts = {json.dumps(record.get("metadata", record.get("prompt")), sort_keys=True) for record in records}
    result = {
        "task": dict(_TEXT_TO_IMAGE),
        "dataset": {"type": "geneval", "name": "GenEval"},
        "n": len(records),
        "metrics": metrics,
    }
    return _run({"prompts": len(prompts)}, model, date, command, [result])


def dpg_bench_results(text: str, model: str, date: str, command: str, origin: str = "") -> dict:
    """DPG-Bench's results .txt (`compute_dpg_bench.py --res-path`) in the results schema: its score and its L1
    category scores (0-100, rounded to 4 decimals), n the grids scored; the grid lines must average to the score."""
    fields = _Fields(origin)
    found = list(_DPG_SCORE.finditer(text))
    if len(found) != 1:
        fields.fail("DPG-Bench score", f"{len(found)} 'DPG-Bench score:' lines; expected the one of a single run")
    try:
        score = float(found[0].group(1))
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        fields.fail("DPG-Bench score", f"expected a finite number, got {found[0].group(1)!r}")
    lines = text[: found[0].start()].splitlines()
    summary = max((at for at, line in enumerate(lines) if line.startswith("Model: ")), default=None)
    if summary is None:
        fields.fail("Model:", "missing: not the results file compute_dpg_bench.py writes (its --res-path)")
    grids, tiles = [], set()
    for number, line in enumerate(lines[:summary], 1):
        if not line.strip():
            continue
        values = []
        for part in reversed(line.split(", ")[1:]):
            try:
                values.append(float(part))
            except ValueError:
                break
        if len(values) < 2:
            fields.fail(f"line {number}", f"expected a scored grid 'PATH, tile scores..., mean', got {line[:80]!r}")
        grids.append(values[0])
        tiles.add(len(values) - 1)
    if not grids:
        fields.fail("the file", "no scored grid lines before 'Model:'; give the file compute_dpg_bench.py wrote")
    if len(tiles) != 1:
        fields.fail("the file", f"grid lines with different numbers of tile scores {sorted(tiles)}")
    mean = 100 * math.fsum(grids) / len(grids)
    if not math.isclose(mean, score, rel_tol=1e-6, abs_tol=1e-6):
        fields.fail(
            "DPG-Bench score",
            f"{score} is not the mean of its {len(grids)} grid lines ({mean:.6f}); give the file of a single run",
        )
    categories = {}
    heading = next((at for at in range(summary, len(lines)) if lines[at].strip() == "L1 category scores:"), None)
    for at in range(heading + 1, len(lines)) if heading is not None else []:
        if not lines[at].startswith("\t"):
            break
        name, _, value = lines[at].strip().rpartition(": ")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not name or not math.isfinite(number):
            fields.fail(f"line {at + 1}", f"expected an L1 category score 'NAME: VALUE', got {lines[at].strip()!r}")
        categories[name] = number
    order = {name: at for at, name in enumerate(_DPG_L1_ORDER)}
    metrics = [{"type": "overall", "name": "DPG-Bench score (0-100)", "value": round(score, 4)}]
    for name in sorted(categories, key=lambda name: (order.get(name, len(order)), name)):
        kind = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        metrics.append({"type": kind, "name": f"DPG-Bench {name}", "value": round(categories[name], 4)})
    result = {
        "task": dict(_TEXT_TO_IMAGE),
        "dataset": {"type": "dpg-bench", "name": "DPG-Bench"},
        "n": len(grids),
        "metrics": metrics,
    }
    return _run({"images_per_prompt": tiles.pop()}, model, date, command, [result])


def _provenance(origin: str, what: str, provenance: Mapping[str, str]) -> dict:
    missing = [key for key in _PROVENANCE_KEYS if key not in provenance]
    if missing:
        raise ResultsFileError(
            f"{origin}: {missing[0]}: missing ({what} does not record {', '.join(missing)}; "
            f"give {' and '.join('--run-' + key for key in missing)})"
        )
    return {key: provenance[key] for key in _PROVENANCE_KEYS}


def _document(text: str, origin: str, provenance: Mapping[str, str], dataset: str | None) -> tuple[str, object]:
    """The kind of the results file `text` and its content in the results schema (a file of this schema is
    returned as it is, for `_parse_results` to check)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        records = _geneval_records(text, origin)
        if records is not None:
            run = _provenance(origin, "GenEval's results.jsonl", provenance)
            return "geneval", geneval_results(records, **run, origin=origin)
        if _DPG_SCORE.search(text):
            run = _provenance(origin, "a DPG-Bench results file", provenance)
            return "dpg-bench", dpg_bench_results(text, **run, origin=origin)
        raise ResultsFileError(
            f"{origin}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}), nor another kind "
            f"of results file ({KINDS})"
        ) from None
    if not isinstance(data, dict):
        return FORMAT, data  # refused by `_parse_results`, naming what it is
    if "format" in data:
        return FORMAT, {**provenance, **data}
    if is_shapes_eval(data):
        return "shapes", shapes_eval_results(data, **_provenance(origin, "a ShapesEval file", provenance))
    if data.get("metric") in _IMAGE_METRICS and "settings" in data:
        what = f"a {_IMAGE_METRICS[data['metric']][2]}"
        run = _provenance(origin, what, provenance)
        if dataset is None:
            raise ResultsFileError(
                f"{origin}: dataset: missing ({what} does not record the benchmark its images were drawn for; give "
                f"--dataset: {', '.join(KNOWN_DATASETS)}, or a Hub dataset id ORG/NAME)"
            )
        return data["metric"], image_metric_results(data, dataset, **run, origin=origin)
    if _GENEVAL_KEYS <= set(data):
        run = _provenance(origin, "GenEval's results.jsonl", provenance)
        return "geneval", geneval_results(_geneval_records(text, origin), **run, origin=origin)
    raise ResultsFileError(
        f'{origin}: a JSON object without "format" that is no other kind of results file either ({KINDS})'
    )


def read_results(
    paths: Iterable[str | Path], provenance: Mapping[str, str] | None = None, dataset: str | None = None
) -> list[MeasuredResult]:
    """The measured numbers of the results files at `paths` (the kinds in this module's docstring), checked.

    `provenance` ({"model", "date", "command"}) fills those fields where a file lacks them (the evaluators' own
    outputs always do); a file's own values win. `dataset` ([`dataset_identifier`]) names the benchmark of the
    `harmon eval fid|clipscore --json` files, and only theirs: it is refused when none is among `paths`. All files
    must be of one model, and no benchmark metric may come twice: a card holds one model's numbers, and two values for
    one metric leave no way to tell which is meant.
    """
    provenance = {key: value for key, value in (provenance or {}).items() if value is not None}
    unknown = sorted(set(provenance) - set(_PROVENANCE_KEYS))
    if unknown:
        raise ValueError(f"provenance keys {unknown} are not among {list(_PROVENANCE_KEYS)}")
    if dataset is not None:
        dataset_identifier(dataset)
    measured: list[MeasuredResult] = []
    kinds = set()
    for path in paths:
        origin = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ResultsFileError(f"{origin}: not UTF-8 text") from None
        kind, data = _document(text, origin, provenance, dataset)
        kinds.add(kind)
        measured += _parse_results(data, origin)
    if dataset is not None and not kinds & set(_IMAGE_METRICS):
        raise ResultsFileError(
            f"a dataset ({dataset!r}, --dataset) is given, but no results file is `harmon eval fid|clipscore --json` "
            "output, the kinds it is for (the others name their benchmark themselves)"
        )
    models = {}
    for result in measured:
        models.setdefault(result.run.model, result.origin)
    if len(models) > 1:
        (first, a), (second, b) = list(models.items())[:2]
        raise ResultsFileError(f"{b}: model: {second!r} differs from {first!r} in {a}; report one model at a time")
    _check_unique(measured)
    return measured


def _check_unique(results: Sequence[MeasuredResult]) -> None:
    seen = {}
    for result in results:
        if result.key in seen:
            raise ResultsFileError(
                f"{result.origin}: {result.dataset_name} {result.metric_type!r} ({result.task_type}) is also reported "
                f"by {seen[result.key].origin}; give each benchmark metric once"
            )
        seen[result.key] = result


# ----------------------------------------------------------------------------------------------- merging
def _split_card(card_text: str) -> RepoCard:
    """The card with its metadata as plain data (`RepoCard`), after checking that `ModelCard` can read it."""
    if not re.match(r"\s*---(\r\n|\r|\n)", card_text):
        card_text = "---\n{}\n---\n" + card_text  # no metadata yet: an empty block, without the library's warning
    try:
        ModelCard(card_text)  # validates the model-index the Hub will read
        return RepoCard(card_text)
    except (ValueError, yaml.YAMLError) as error:
        raise CardError(f"the card's metadata cannot be read: {' '.join(str(error).split())}") from None


def _stored_records(text: str) -> tuple[tuple[int, int] | None, list[MeasuredResult]]:
    """The span of the card's measured section in `text` (or None) and the results its data block holds."""
    begins = [match.start() for match in re.finditer(re.escape(BEGIN_MARKER), text)]
    ends = [match.end() for match in re.finditer(re.escape(END_MARKER), text)]
    if not begins and not ends:
        return None, []
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise CardError(
            f"the card's measured-results markers are broken ({len(begins)} begin, {len(ends)} end marker(s)); "
            "restore the section or remove it whole"
        )
    section = text[begins[0] : ends[0]]
    records = []
    start = section.find(DATA_OPEN)
    if start >= 0:
        stop = section.find("-->", start)
        for number, line in enumerate(section[start + len(DATA_OPEN) : stop].splitlines()):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                run = entry.get("run")
                records.append(
                    MeasuredResult(
                        task_type=entry["task"]["type"],
                        task_name=entry["task"].get("name"),
                        dataset_type=entry["dataset"]["type"],
                        dataset_name=entry["dataset"]["name"],
                        dataset_config=entry["dataset"].get("config"),
                        dataset_split=entry["dataset"].get("split"),
                        dataset_revision=entry["dataset"].get("revision"),
                        metric_type=entry["metric"]["type"],
                        metric_name=entry["metric"].get("name"),
                        value=entry["value"],
                        n=entry.get("n"),
                        run=Run(**run) if run else None,
                        origin="the card",
                    )
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                raise CardError(f"the card's measured-results data block has an unreadable line {number}") from None
    return (begins[0], ends[0]), records


def measured_in_card(card_text: str) -> list[MeasuredResult]:
    """The measured results a card holds (as `merge_results_into_card` wrote them)."""
    return _stored_records(_split_card(card_text).text)[1]


def shared_identifiers(card_text: str) -> list[str]:
    """The benchmarks (as "dataset (task type)") for which the card holds measured entries and entries of another
    source under the same task and dataset identifiers: apart in the card as written, but merged under one source
    by huggingface_hub's `ModelCardData` should anyone re-save the card through it (see the module's caveat)."""
    index = _split_card(card_text).data.get("model-index") or []
    ours, others = {}, set()
    for element in index:
        for entry in element.get("results") or []:
            task, dataset = entry.get("task") or {}, entry.get("dataset") or {}
            identifier = (task.get("type"), *(dataset.get(key) for key in ("type", "config", "split", "revision")))
            if _is_ours(entry):
                ours[identifier] = f"{dataset.get('name')} ({task.get('type')})"
            else:
                others.add(identifier)
    return [name for identifier, name in ours.items() if identifier in others]


def _is_ours(entry) -> bool:
    return isinstance(entry, dict) and (entry.get("source") or {}).get("name") == MEASURED_SOURCE_NAME


def _escape_cell(text) -> str:
    return str(text).replace("|", "\\|")


def _code(text: str) -> str:
    """`text` as Markdown inline code, whatever backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _number(value) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _data_line(result: MeasuredResult) -> str:
    # `<` and `>` only occur inside JSON strings, so escaping them keeps the HTML comment closed where it should be.
    return json.dumps(result.record(), ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def _section(results: Sequence[MeasuredResult], newline: str) -> str:
    runs: list[Run | None] = []
    for result in results:
        if result.run not in runs:
            runs.append(result.run)
    rows = ["| task | benchmark | metric | value | n | run |", "|---|---|---|---|---|---|"]
    for result in results:
        qualifiers = [part for part in (result.dataset_config, result.dataset_split) if part]
        benchmark = result.dataset_name + (f" ({', '.join(qualifiers)})" if qualifiers else "")
        cells = (
            result.task_name or result.task_type,
            benchmark,
            result.metric_name or result.metric_type,
            _number(result.value),
            result.n if result.n is not None else "",
            runs.index(result.run) + 1,
        )
        rows.append("| " + " | ".join(_escape_cell(cell) for cell in cells) + " |")
    run_lines = []
    for number, run in enumerate(runs, 1):
        if run is None:
            run_lines.append(f"{number}. not recorded (the entry was in the metadata without a run)")
            continue
        settings = ", ".join(
            _code(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
            for key, value in run.settings.items()
        )
        run_lines.append(
            f"{number}. {run.date}, model {_code(run.model)}: {_code(run.command)}; settings: {settings or 'none given'}"
        )
    lines = [
        BEGIN_MARKER,
        SECTION_HEADING,
        "",
        "These numbers were **measured with this implementation** (`harmon eval`); they are not numbers reported by "
        "the paper. The card's metadata (`model-index`) lists them with the source "
        f'"{MEASURED_SOURCE_NAME}". Each row names the run that measured it.',
        "",
        *rows,
        "",
        "Runs:",
        "",
        *run_lines,
        "",
        DATA_OPEN,
        *(_data_line(result) for result in results),
        "-->",
        END_MARKER,
    ]
    return newline.join(lines)


def _insert_at(text: str) -> int:
    """Where a new measured section goes: at the end of the Evaluation section, else at the end of the card."""
    offset, fenced, in_evaluation = 0, False, False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and in_evaluation and re.match(r"#{1,2} ", line):
            return offset
        elif not fenced and line.rstrip() == AFTER_HEADING:
            in_evaluation = True
        offset += len(line)
    return len(text)


def _results_of_entries(name, entries: list) -> list[MeasuredResult]:
    """Measured `model-index` entries as results without a run (what the card's data block does not record)."""
    if not entries:
        return []
    _, items = model_index_to_eval_results([{"name": name, "results": entries}])
    return [
        MeasuredResult(
            task_type=item.task_type,
            task_name=item.task_name,
            dataset_type=item.dataset_type,
            dataset_name=item.dataset_name,
            dataset_config=item.dataset_config,
            dataset_split=item.dataset_split,
            dataset_revision=item.dataset_revision,
            metric_type=item.metric_type,
            metric_name=item.metric_name,
            value=item.metric_value,
            origin="the card",
        )
        for item in items
    ]


def merge_results_into_card(
    card_text: str,
    results: Sequence[MeasuredResult],
    *,
    source_url: str | None = None,
    model_name: str | None = None,
) -> str:
    """`card_text` with `results` merged in as measured by us: in the `model-index` metadata (source
    `MEASURED_SOURCE_NAME`, `source_url`) and in the card's "Measured results" section. Entries from other sources
    are kept as they are; a result whose benchmark metric the card already holds as ours replaces it in place.

    Args:
        source_url: the page showing these results (e.g. the model's Hub page); default: the one the card's measured
            entries already name. huggingface_hub needs one for a named source.
        model_name: the model-index name, used only when the card has no model-index yet (default: the results'
            model); with several model entries in the card, it picks the one to write to.
    """
    _check_unique(results)
    card = _split_card(card_text)
    newline = "\r\n" if "\r\n" in card.text else "\n"
    span, stored = _stored_records(card.text)
    index = card.data.get("model-index")
    if index is not None and not isinstance(index, list):
        raise CardError("the card's model-index is not a list")
    index = list(index or [])
    existing_ours = [entry for element in index for entry in element.get("results") or [] if _is_ours(entry)]
    if source_url is None:
        urls = {(entry.get("source") or {}).get("url") for entry in existing_ours}
        if len(urls) != 1:
            raise CardError(
                "give a source URL (--source-url): the page where these measured results are shown, e.g. the "
                "model's Hub page https://huggingface.co/ORG/NAME"
            )
        source_url = urls.pop()

    # The target model entry: the one named, else the only one, else the one already holding ours.
    if not index:
        name = model_name or (results[0].run.model if results and results[0].run else None)
        if not name:
            raise CardError("the card has no model-index yet; give the model's name (--model-name)")
        index = [{"name": name, "results": []}]
    if model_name is not None:
        targets = [element for element in index if element.get("name") == model_name]
        if not targets:
            names = [element.get("name") for element in index]
            raise CardError(f"the card's model-index names {names}, not --model-name {model_name!r}")
    elif len(index) == 1:
        targets = index
    else:
        targets = [element for element in index if any(_is_ours(entry) for entry in element.get("results") or [])]
        if len(targets) != 1:
            names = [element.get("name") for element in index]
            raise CardError(f"the card's model-index holds several models {names}; pick one with --model-name")
    target = targets[0]
    if any(_is_ours(entry) for element in index if element is not target for entry in element.get("results") or []):
        raise CardError("the card holds measured results under another model-index name; merge them by hand first")

    # Ours: what the card's data block records, then metadata entries it does not (kept, run unknown), then the new.
    merged: dict[tuple, MeasuredResult] = {result.key: result for result in stored}
    for result in _results_of_entries(target.get("name"), existing_ours):
        merged.setdefault(result.key, result)
    for result in results:
        merged[result.key] = result  # in place when re-reported, appended when new
    ours = list(merged.values())

    others = [entry for entry in target.get("results") or [] if not _is_ours(entry)]
    written = eval_results_to_model_index(target["name"], [result.eval_result(source_url) for result in ours])
    new_target = {**target, "results": others + written[0]["results"]}
    card.data["model-index"] = [new_target if element is target else element for element in index]

    section = _section(ours, newline)
    text = card.text
    if span is not None:
        text = text[: span[0]] + section + text[span[1] :]
    else:
        at = _insert_at(text)
        before, after = text[:at].rstrip("\r\n"), text[at:]
        text = before + newline * 2 + section + newline + (newline + after if after else "")
    card.text = text
    return str(card)


def carry_measured_results(
    old_card_text: str, new_card_text: str, *, url_replace: tuple[str, str] | None = None
) -> str:
    """`new_card_text` with the measured results of `old_card_text` merged in as they were (values, runs, source
    URL): for a card rendered again from its template, as `harmon push` renders a card that still shows the repo
    placeholder. The new card's own entries (the paper's numbers) are kept; `url_replace` (old, new) is applied to the
    source URL (the placeholder, say). `new_card_text` comes back unchanged when `old_card_text` holds no measured
    results; a measured section that cannot be read raises `CardError`, so that nothing is dropped silently.

    The model-index name is the new card's; when the new card has no model-index, the one the old card's measured
    results were under.
    """
    old = _split_card(old_card_text)
    _, stored = _stored_records(old.text)
    index = old.data.get("model-index") or []
    if not isinstance(index, list):
        raise CardError("the card's model-index is not a list")
    holders = [
        element
        for element in index
        if isinstance(element, dict) and any(_is_ours(entry) for entry in element.get("results") or [])
    ]
    if not stored and not holders:
        return new_card_text
    if not holders:
        raise CardError(
            "the card has a measured-results section but no measured entries in its model-index; run "
            "`harmon eval report` on it again"
        )
    if len(holders) > 1:
        raise CardError(
            "the card's measured results are not under one model-index name (under "
            f"{[element.get('name') for element in holders]}); merge them by hand first"
        )
    entries = [entry for entry in holders[0]["results"] if _is_ours(entry)]
    results = {result.key: result for result in stored}
    for result in _results_of_entries(holders[0].get("name"), entries):
        results.setdefault(result.key, result)
    urls = {(entry.get("source") or {}).get("url") for entry in entries}
    if len(urls) != 1 or None in urls:
        raise CardError(
            "the card's measured results do not name one source URL in its model-index; run `harmon eval report` "
            "on it again with --source-url"
        )
    source_url = urls.pop()
    if url_replace is not None:
        source_url = source_url.replace(*url_replace)
    has_index = bool(_split_card(new_card_text).data.get("model-index"))
    return merge_results_into_card(
        new_card_text,
        list(results.values()),
        source_url=source_url,
        model_name=None if has_index else holders[0].get("name"),
    )
