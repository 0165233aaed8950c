"""Training data sources: what one `--data` entry or config item names (`SourceSpec`), and reading its records.

Whatever the storage format, a source gives records of one shape per kind:

* `caption`, `t2i`: `{"image": ..., "text": str | list[str]}`
* `vqa`: `{"image": ..., "messages": [turn, ...]}` (LLaVA `{"from", "value"}` or chat `{"role", "content"}` turns)
* `text`: `{"messages": [turn, ...]}`
* `edit`: `{"sources": [image, ...], "instruction": str | list[str], "target": image}`, read from the fields (jsonl) or
  columns (hf) that `source_column`, `instruction_column` and `target_column` name; a source field holds one image
  or a list of them, so InstructPix2Pix-style (`original_image`, `edit_prompt`, `edited_image`) and MagicBrush-style
  (`source_img`, `instruction`, `target_img`) sets map onto it by options alone.
* `distill`: `{"target": image, "prompt": str | None, "sources": [image, ...], "teacher_prompt": str | None}` (task
  `distill`, conditioning distillation): the model, given `prompt` (None: the unconditional text) with `sources` in
  view (none: a text-to-image prompt), learns to give the conditioning that a frozen copy of itself gives
  `teacher_prompt` (None: unconditional) for `target`; jsonl fields or hf columns of those names.

`image` is what the storage holds: a path (made absolute), an encoded image (`{"bytes", "path"}` from a Hugging
Face `Image` column) or a PIL image; `images.read_image` reads them all. Values are checked later by the example
builder, which skips a bad record (`SkipSample`) so that one broken line never stops a run.
"""

import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .skips import BAD_RECORD, SkipSample


TASKS = ("text", "image2text", "text2image", "edit", "distill")
KIND_TO_TASK = {
    "text": "text",
    "caption": "image2text",
    "vqa": "image2text",
    "t2i": "text2image",
    "edit": "edit",
    "distill": "distill",
}
FORMATS = ("reference_folder", "llava_json", "jsonl", "hf")
# Which kinds each format can hold: the reference folder layout stores captions only, LLaVA files conversations.
FORMAT_KINDS = {
    "reference_folder": ("caption", "t2i"),
    "llava_json": ("vqa",),
    "jsonl": tuple(KIND_TO_TASK),
    "hf": tuple(KIND_TO_TASK),
}
# Options read by some formats only; a value set for another format is a mistake worth reporting.
OPTION_FORMATS = {
    "split": ("hf",),
    "image_column": ("hf",),
    "text_column": ("hf",),
    "streaming": ("hf",),
    "annotation_folder": ("reference_folder",),
    "source_column": ("jsonl", "hf"),
    "instruction_column": ("jsonl", "hf"),
    "target_column": ("jsonl", "hf"),
}
# Options that only some kinds read: an edit source names its three fields with its own options, not with the
# image/text columns of the other kinds.
OPTION_KINDS = {
    "image_column": ("caption", "vqa", "text", "t2i"),
    "text_column": ("caption", "vqa", "text", "t2i"),
    "source_column": ("edit",),
    "instruction_column": ("edit",),
    "target_column": ("edit",),
}
# The fields of a stored record that each kind reads (jsonl and LLaVA names; hf columns are mapped onto them).
KIND_FIELDS = {
    "caption": ("image", "text"),
    "t2i": ("image", "text"),
    "vqa": ("image", "conversations"),
    "text": ("messages",),
}
GRAMMAR = "KIND=FORMAT:PATH[?key=value&...]"
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


@dataclass
class SourceSpec:
    r"""
    One training data source.

    Args:
        kind (`str`): `caption` or `vqa` (image-to-text), `text` (chat), `t2i` (text-to-image), `edit` (instruction
            editing); see `KIND_TO_TASK`.
        format (`str`): storage format, one of `FORMATS`:
            `jsonl` (one JSON object per line), `llava_json` (a JSON list of LLaVA records), `reference_folder`
            (the reference's `data_info.json` list of `{"image", "annotation"}`, or a folder of such lists), `hf` (a
            `save_to_disk` folder, a local dataset folder or script, or a Hub dataset id).
        path (`str`): the file, folder or dataset id.
        weight (`float`): share of this source among the sources of its task (caption and vqa share image2text);
            equal weights split a task evenly.
        split (`str`, *optional*): `hf` split (default `train`; a saved `DatasetDict` with one split needs none).
        image_column, text_column (`str`): `hf` columns holding the image (PIL image, encoded bytes or path) and the
            text (caption for caption/t2i, the conversation for vqa and text).
        source_column, instruction_column, target_column (`str`): `edit` only: the jsonl fields or `hf` columns of
            the source image(s) (one image or a list), the instruction and the target image (defaults `source`,
            `instruction`, `target`).
        streaming (`bool`): read an `hf` source as a stream (no random access, no download of the whole set).
        image_folder (`str`, *optional*): folder that relative image paths start from (default: the folder of the
            jsonl/JSON file or of `data_info.json`, or the `hf` dataset folder).
        annotation_folder (`str`, *optional*): `reference_folder` only: folder of the `{"caption": ...}` files
            (default: the folder of `data_info.json`).
    """

    kind: str
    format: str
    path: str
    weight: float = 1.0
    split: str | None = None
    image_column: str = "image"
    text_column: str = "text"
    streaming: bool = False
    image_folder: str | None = None
    annotation_folder: str | None = None
    source_column: str = "source"
    instruction_column: str = "instruction"
    target_column: str = "target"

    def __post_init__(self) -> None:
        if self.kind not in KIND_TO_TASK:
            raise ValueError(f"kind must be one of {tuple(KIND_TO_TASK)}, got {self.kind!r}.")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}.")
        if self.kind not in FORMAT_KINDS[self.format]:
            raise ValueError(
                f"format {self.format!r} holds kinds {FORMAT_KINDS[self.format]} only, got kind {self.kind!r}."
            )
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"path must be a non-empty string, got {self.path!r}.")
        weight = self.weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ValueError(f"weight must be a finite number > 0, got {weight!r}.")
        for name in ("split", "image_folder", "annotation_folder"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be None or a non-empty string, got {value!r}.")
        for name in ("image_column", "text_column", "source_column", "instruction_column", "target_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}.")
        if not isinstance(self.streaming, bool):
            raise ValueError(f"streaming must be true or false, got {self.streaming!r}.")
        defaults = {field.name: field.default for field in fields(self)}
        for name, formats in OPTION_FORMATS.items():
            if getattr(self, name) != defaults[name] and self.format not in formats:
                raise ValueError(
                    f"{name} applies to format {' or '.join(formats)} only, got {name}={getattr(self, name)!r} "
                    f"with format {self.format!r}."
                )
        for name, kinds in OPTION_KINDS.items():
            if getattr(self, name) != defaults[name] and self.kind not in kinds:
                raise ValueError(
                    f"{name} applies to kind {' or '.join(kinds)} only, got {name}={getattr(self, name)!r} with kind "
                    f"{self.kind!r}."
                )

    @property
    def task(self) -> str:
        """The task slot this source feeds (`text`, `image2text`, `text2image` or `edit`)."""
        return KIND_TO_TASK[self.kind]

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Fields that `parse` accepts as `?key=value` options."""
        return tuple(field.name for field in fields(cls) if field.name not in ("kind", "format", "path"))

    @classmethod
    def parse(cls, text: str) -> "SourceSpec":
        """Parse the command-line form `KIND=FORMAT:PATH[?key=value&...]`, e.g. `t2i=jsonl:laion.jsonl?weight=2`.

        KIND ends at the first `=` and FORMAT at the first `:` after it, so paths may hold both (and drive letters);
        options follow the first `?`, so paths must not contain one. Option keys are `option_names()`.
        """
        if not isinstance(text, str):
            raise ValueError(f"data source must be a string {GRAMMAR}, got {type(text).__name__}.")
        kind, found, rest = text.partition("=")
        if not found:
            raise ValueError(
                f"data source {text!r} has no '=' after the kind: expected {GRAMMAR} with KIND one of "
                f"{tuple(KIND_TO_TASK)}."
            )
        format_, found, rest = rest.partition(":")
        if not found:
            raise ValueError(
                f"data source {text!r} has no ':' after the format: expected {GRAMMAR} with FORMAT one of {FORMATS}."
            )
        path, _, query = rest.partition("?")
        options = {}
        for item in filter(None, query.split("&")):
            key, found, value = item.partition("=")
            if not found or key not in cls.option_names():
                raise ValueError(
                    f"data source {text!r}: option {item!r} must be key=value with key one of {cls.option_names()}."
                )
            if key in options:
                raise ValueError(f"data source {text!r}: option {key!r} is given twice.")
            options[key] = _option_value(key, value, text)
        try:
            return cls(kind=kind.strip(), format=format_.strip(), path=path, **options)
        except ValueError as error:
            raise ValueError(f"data source {text!r}: {error}") from None

    @classmethod
    def from_dict(cls, data: Mapping) -> "SourceSpec":
        """Build from a config mapping `{kind, format, path, weight?, split?, ...}` (e.g. one YAML list item)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"data source must be a mapping with keys kind, format, path, ..., got {data!r}.")
        valid = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"data source {dict(data)!r} has unknown keys {unknown}; valid keys are {valid}.")
        missing = [name for name in ("kind", "format", "path") if name not in data]
        if missing:
            raise ValueError(f"data source {dict(data)!r} lacks the required keys {missing}.")
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"data source {dict(data)!r}: {error}") from None


def _option_value(key: str, value: str, text: str) -> object:
    """A `?key=value` option converted to its field's type."""
    if key == "weight":
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"data source {text!r}: weight must be a number, got {value!r}.") from None
    if key == "streaming":
        if value.lower() not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(
                f"data source {text!r}: streaming must be one of {TRUE_WORDS + FALSE_WORDS}, got {value!r}."
            )
        return value.lower() in TRUE_WORDS
    return value


# ---------------------------------------------------------------------------------------------------- records
def _resolve_image(value: object, root: Path) -> object:
    """Relative image paths start from `root`; other values (absolute paths, bytes, images) are kept."""
    if isinstance(value, str) and value and not os.path.isabs(value):
        return str(root / value)
    return value


def _to_record(kind: str, stored: object, image_root: Path, where: str) -> dict:
    """The record of `kind` from a stored JSON object or dataset row (see the module docstring)."""
    if not isinstance(stored, Mapping):
        raise SkipSample(BAD_RECORD, f"{where} is a {type(stored).__name__}, not an object.")
    if kind == "vqa" and "conversations" not in stored and "messages" in stored:
        stored = {**stored, "conversations": stored["messages"]}
    missing = [name for name in KIND_FIELDS[kind] if stored.get(name) is None]
    if missing:
        raise SkipSample(BAD_RECORD, f"{where} has no {missing} (a {kind} record needs {list(KIND_FIELDS[kind])}).")
    if kind == "text":
        return {"messages": stored["messages"]}
    image = _resolve_image(stored["image"], image_root)
    if kind == "vqa":
        return {"image": image, "messages": stored["conversations"]}
    return {"image": image, "text": stored["text"]}


def _edit_record(spec: "SourceSpec", stored: object, image_root: Path, where: str) -> dict:
    """The `edit` record of a stored JSON object or dataset row, read through the spec's three field names."""
    if not isinstance(stored, Mapping):
        raise SkipSample(BAD_RECORD, f"{where} is a {type(stored).__name__}, not an object.")
    columns = {"sources": spec.source_column, "instruction": spec.instruction_column, "target": spec.target_column}
    missing = [column for column in columns.values() if stored.get(column) is None]
    if missing:
        raise SkipSample(
            BAD_RECORD,
            f"{where} has no {missing} (an edit record needs {list(columns.values())}: source image(s), "
            "instruction, target image).",
        )
    sources = stored[spec.source_column]
    sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if not sources or any(source is None for source in sources):
        raise SkipSample(BAD_RECORD, f"{where}: {spec.source_column!r} must hold one image or a non-empty list.")
    return {
        "sources": [_resolve_image(source, image_root) for source in sources],
        "instruction": stored[spec.instruction_column],
        "target": _resolve_image(stored[spec.target_column], image_root),
    }


def _distill_record(stored: object, image_root: Path, where: str) -> dict:
    """The `distill` record of a stored JSON object or dataset row (see the module docstring)."""
    if not isinstance(stored, Mapping):
        raise SkipSample(BAD_RECORD, f"{where} is a {type(stored).__name__}, not an object.")
    if stored.get("target") is None:
        raise SkipSample(BAD_RECORD, f"{where} has no 'target' (a distill record needs the image to draw).")
    sources = stored.get("sources") or []
    sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if any(source is None for source in sources):
        raise SkipSample(BAD_RECORD, f"{where}: 'sources' must hold images (or be empty).")
    texts = {name: stored.get(name) for name in ("prompt", "teacher_prompt")}
    for name, text in texts.items():
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise SkipSample(BAD_RECORD, f"{where}: {name!r} must be a non-empty string or null, got {text!r:.200}.")
    return {
        "target": _resolve_image(stored["target"], image_root),
        "sources": [_resolve_image(source, image_root) for source in sources],
        **texts,
    }


def _record(spec: "SourceSpec", stored: object, image_root: Path, where: str) -> dict:
    """The record of a stored object from a source that may hold any kind (jsonl, hf)."""
    if spec.kind == "edit":
        return _edit_record(spec, stored, image_root, where)
    if spec.kind == "distill":
        return _distill_record(stored, image_root, where)
    return _to_record(spec.kind, stored, image_root, where)


def _file_fingerprint(*paths: Path) -> str:
    """Size and modification time of the files that list the records: it changes when they are rewritten."""
    return ";".join(f"{path.stat().st_size}-{path.stat().st_mtime_ns}" for path in paths)


class Source:
    """Random access to the records of one map-style source: `len(source)` records, `source[i]` gives record `i`.

    `source[i]` raises `SkipSample` for a record that cannot be read or lacks a field.
    """

    streaming = False

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """What identifies the stored images of this source (a latents cache is keyed by it)."""
        spec = self.spec
        path = spec.path if spec.format == "hf" and not os.path.exists(spec.path) else os.path.realpath(spec.path)
        return json.dumps([spec.format, path, spec.split, spec.image_column, spec.image_folder])

    @property
    def fingerprint(self) -> str:
        """Changes when the stored records change, so that caches of an older version are not used."""
        raise NotImplementedError


class JsonlSource(Source):
    """One JSON object per line (blank lines ignored), read on demand from line offsets so large files stay on disk."""

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self._path = Path(spec.path)
        self._image_root = Path(spec.image_folder) if spec.image_folder else self._path.parent
        offsets, offset = [], 0
        with open(self._path, "rb") as handle:
            for line in handle:
                if line.strip():
                    offsets.append(offset)
                offset += len(line)
        self._offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> dict:
        with open(self._path, "rb") as handle:
            handle.seek(int(self._offsets[index]))
            line = handle.readline()
        where = f"{self._path} record {index}"
        try:
            stored = json.loads(line)
        except ValueError as error:  # invalid JSON or invalid UTF-8
            raise SkipSample(BAD_RECORD, f"{where} is not valid JSON: {error}") from None
        return _record(self.spec, stored, self._image_root, where)

    @property
    def fingerprint(self) -> str:
        return _file_fingerprint(self._path)


class LlavaJsonSource(Source):
    """A JSON list of LLaVA records `{"image", "conversations": [{"from": "human" | "gpt", "value"}, ...]}`."""

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self._path = Path(spec.path)
        self._image_root = Path(spec.image_folder) if spec.image_folder else self._path.parent
        with open(self._path, encoding="utf-8") as handle:
            self._records = json.load(handle)
        if not isinstance(self._records, list):
            raise ValueError(
                f"llava_json file {self._path} must hold a JSON list of records, got a {type(self._records).__name__}."
            )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        return _to_record(self.spec.kind, self._records[index], self._image_root, f"{self._path} record {index}")

    @property
    def fingerprint(self) -> str:
        return _file_fingerprint(self._path)


class ReferenceFolderSource(Source):
    """The reference's caption layout: `data_info.json` lists `{"image": path, "annotation": path}` and each
    annotation file holds `{"caption": ...}`.

    `path` is the `data_info.json` file (images and annotations default to paths relative to its folder) or a folder
    of such JSON lists (then `image_folder` and `annotation_folder` are required: the lists' folder holds no images).
    """

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        path = Path(spec.path)
        if path.is_dir():
            if spec.image_folder is None or spec.annotation_folder is None:
                raise ValueError(
                    f"reference_folder path {path} is a folder of JSON lists, so image_folder and annotation_folder "
                    f"must be given (got image_folder={spec.image_folder!r}, "
                    f"annotation_folder={spec.annotation_folder!r})."
                )
            self._files = sorted(path.glob("*.json"))
            base = path
        else:
            self._files, base = [path], path.parent
        self._image_root = Path(spec.image_folder) if spec.image_folder else base
        self._annotation_root = Path(spec.annotation_folder) if spec.annotation_folder else base
        self._entries = []
        for file in self._files:
            with open(file, encoding="utf-8") as handle:
                entries = json.load(handle)
            if not isinstance(entries, list):
                raise ValueError(
                    f"reference_folder file {file} must hold a JSON list of {{'image', 'annotation'}} records, got a "
                    f"{type(entries).__name__}."
                )
            self._entries.extend(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict:
        entry, where = self._entries[index], f"{self.spec.path} record {index}"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("annotation"), str) or "image" not in entry:
            raise SkipSample(
                BAD_RECORD, f"{where} must be an object with 'image' and 'annotation' paths, got {entry!r:.200}."
            )
        annotation = self._annotation_root / entry["annotation"]
        try:
            with open(annotation, encoding="utf-8") as handle:
                caption = json.load(handle)["caption"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SkipSample(BAD_RECORD, f"{where}: annotation {annotation} gives no caption ({error!r}).") from None
        return _to_record(self.spec.kind, {"image": entry["image"], "text": caption}, self._image_root, where)

    @property
    def fingerprint(self) -> str:
        return _file_fingerprint(*self._files)


def _load_hf(spec: SourceSpec):
    """A `datasets.Dataset` (or `IterableDataset` when streaming) with image decoding left to the data code."""
    import datasets

    path = Path(spec.path)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            split = spec.split if spec.split is not None or len(data) != 1 else next(iter(data))
            if split not in data:
                raise ValueError(
                    f"split must be one of {list(data)} for the saved dataset {path}, got {spec.split!r}."
                )
            data = data[split]
        elif spec.split is not None:
            raise ValueError(f"split must be None for {path}, a saved single split; got {spec.split!r}.")
        if spec.streaming:
            data = data.to_iterable_dataset()
    else:
        data = datasets.load_dataset(spec.path, split=spec.split or "train", streaming=spec.streaming)
    if spec.kind == "edit":
        options = ("source_column", "instruction_column", "target_column")
        images = (spec.source_column, spec.target_column)
    elif spec.kind == "distill":  # fixed column names (the module docstring); sources and prompts may be absent
        options, images = (), tuple(name for name in ("target", "sources") if name in (data.column_names or ()))
    else:
        options = ("text_column",) if spec.kind == "text" else ("image_column", "text_column")
        images = () if spec.kind == "text" else (spec.image_column,)
    names = data.column_names
    for option in options:
        column = getattr(spec, option)
        if names is not None and column not in names:
            raise ValueError(f"{option} {column!r} is not a column of {spec.path}; its columns are {names}.")
    features = data.features or {}
    for column in dict.fromkeys(images):
        # Undecoded rows are cheap: only the sampled images are decoded (by the data code, which can skip bad ones).
        undecoded = _undecoded_image_feature(features.get(column))
        if undecoded is not None:
            data = data.cast_column(column, undecoded)
    return data


def _undecoded_image_feature(feature):
    """The feature of an `Image` column, or of a list of images, with decoding off; None for other features."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, list) and len(feature) == 1 and isinstance(feature[0], datasets.Image):
        return [datasets.Image(decode=False)]
    for name in ("List", "Sequence"):  # `List` since datasets 4, `Sequence` before
        kind = getattr(datasets, name, None)
        if isinstance(kind, type) and isinstance(feature, kind) and isinstance(feature.feature, datasets.Image):
            return kind(datasets.Image(decode=False), length=feature.length)
    return None


class HFSource(Source):
    """A Hugging Face dataset with random access; rows are mapped onto records by `image_column`/`text_column`."""

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self._data = _load_hf(spec)
        self._image_root = Path(spec.image_folder) if spec.image_folder else Path(spec.path)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict:
        return hf_row_to_record(self.spec, self._data[index], self._image_root, f"{self.spec.path} row {index}")

    @property
    def fingerprint(self) -> str:
        return self._data._fingerprint


def hf_row_to_record(spec: SourceSpec, row: Mapping, image_root: Path, where: str) -> dict:
    """Map a dataset row onto a record through the spec's column names."""
    if spec.kind == "edit":
        return _edit_record(spec, row, image_root, where)
    if spec.kind == "distill":
        return _distill_record(row, image_root, where)
    if spec.kind == "text":
        stored = {"messages": row[spec.text_column]}
    else:
        image_field, text_field = KIND_FIELDS[spec.kind]
        stored = {image_field: row[spec.image_column], text_field: row[spec.text_column]}
    return _to_record(spec.kind, stored, image_root, where)


class StreamingSource:
    """An `hf` source read as a stream: no length, no random access, one pass after another.

    Reader `k` of `n` gets items `k, k + n, k + 2n, ...` of each pass, so ranks (and data-loader workers) read
    disjoint items. The stream is read in stored order: shuffle large sets before saving them.
    """

    streaming = True

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._data = _load_hf(spec)
        self._image_root = Path(spec.image_folder) if spec.image_folder else Path(spec.path)

    def rows(self, reader: int, num_readers: int) -> Iterator[Mapping]:
        """The raw rows of one pass that belong to `reader`; `to_record` turns one into a record.

        Every reader reads the whole stream and keeps its share, so many readers of a remote stream download it many
        times: large remote sets are better downloaded and read map-style.
        """
        return itertools.islice(self._all_rows(), reader, None, num_readers)

    def _all_rows(self) -> Iterator[Mapping]:
        # `IterableDataset.iter`, not `iter(dataset)`: in a data-loader worker the latter hands each worker some of the
        # dataset's shards by itself, while readers here split the rows explicitly.
        for batch in self._data.iter(batch_size=256):
            for values in zip(*batch.values()):
                yield dict(zip(batch, values, strict=True))

    def to_record(self, row: Mapping) -> dict:
        return hf_row_to_record(self.spec, row, self._image_root, f"a row of {self.spec.path}")


def load_source(spec: SourceSpec) -> Source | StreamingSource:
    """Open the source `spec` names: a map-style [`Source`], or a [`StreamingSource`] for `hf` with `streaming`."""
    if not isinstance(spec, SourceSpec):
        raise ValueError(f"spec must be a SourceSpec, got {type(spec).__name__}.")
    if spec.format != "hf" and not os.path.exists(spec.path):
        raise FileNotFoundError(f"data source path {spec.path!r} ({spec.kind}={spec.format}) does not exist.")
    if spec.streaming:
        return StreamingSource(spec)
    loaders = {
        "jsonl": JsonlSource,
        "llava_json": LlavaJsonSource,
        "reference_folder": ReferenceFolderSource,
        "hf": HFSource,
    }
    source = loaders[spec.format](spec)
    if len(source) == 0:
        raise ValueError(f"data source {spec.path!r} ({spec.kind}={spec.format}) holds no records.")
    return source
