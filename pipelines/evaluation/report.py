"""Merge measured evaluation results into a model card's `model-index`, apart from the numbers a paper reports.

    harmon eval report geneval.json fid.json --card README.md --output README.new.md --source-url URL

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
numbers; counts are integers >= 1. Other keys are refused, so a misspelt one is not silently dropped. A ShapesEval file
written by `harmon eval shapes --json` is read too (its generation categories and VQA accuracy): it records no model,
command or date, so those come from `provenance`.

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
from pathlib import Path

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

# ShapesEval's generation categories (training/shapes/evaluation.py) -> metric type and name, as the paper's GenEval.
_SHAPES_CATEGORIES = {
    "overall": ("overall", "overall"),
    "single_object": ("single-object", "single object"),
    "two_object": ("two-objects", "two objects"),
    "counting": ("counting", "counting"),
    "colors": ("colors", "colors"),
    "position": ("position", "position"),
    "color_attr": ("color-attribution", "color attribution"),
}


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
        path = f"{where}.{key}"
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


def read_results(paths: Iterable[str | Path], provenance: Mapping[str, str] | None = None) -> list[MeasuredResult]:
    """The measured numbers of the results files at `paths` (schema in this module's docstring), checked.

    `provenance` ({"model", "date", "command"}) fills those fields where a file lacks them (a ShapesEval file always
    does); a file's own values win. All files must be of one model, and no benchmark metric may come twice: a card
    holds one model's numbers, and two values for one metric leave no way to tell which is meant.
    """
    provenance = {key: value for key, value in (provenance or {}).items() if value is not None}
    unknown = sorted(set(provenance) - set(_PROVENANCE_KEYS))
    if unknown:
        raise ValueError(f"provenance keys {unknown} are not among {list(_PROVENANCE_KEYS)}")
    measured: list[MeasuredResult] = []
    for path in paths:
        origin = str(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ResultsFileError(
                f"{origin}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
            ) from None
        except UnicodeDecodeError:
            raise ResultsFileError(f"{origin}: not UTF-8 text") from None
        if is_shapes_eval(data):
            missing = [key for key in _PROVENANCE_KEYS if key not in provenance]
            if missing:
                raise ResultsFileError(
                    f"{origin}: {missing[0]}: missing (a ShapesEval file does not record {', '.join(missing)}; "
                    f"give {' and '.join('--run-' + key for key in missing)})"
                )
            data = shapes_eval_results(data, **provenance)
        elif isinstance(data, dict):
            data = {**provenance, **data}
        measured += _parse_results(data, origin)
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
    if existing_ours:
        _, from_index = model_index_to_eval_results([{"name": target.get("name"), "results": existing_ours}])
        for item in from_index:
            result = MeasuredResult(
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
