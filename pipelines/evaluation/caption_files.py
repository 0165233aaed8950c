"""The caption files of FID and CLIPScore benchmarks, read into (id, caption) pairs for `harmon eval captions`.

The format is told by the content, not the name:

- one JSON object with an "annotations" list: COCO's `captions_*.json` (`{"annotations": [{"id": int,
  "image_id": int, "caption": str}, ...]}`). One caption per IMAGE, not per annotation: FID compares against one
  reference picture per COCO image, and "MSCOCO-30K" means 30K images with one caption each. An image's caption is
  its annotation with the smallest id (whatever the file's order); the id is the image id zero-padded to 12 digits,
  as in COCO's file names; images come in order of image id.
- JSON Lines: one object a line, `{"id": str | int, "caption": str}` ("prompt" instead of "caption" is accepted;
  other keys are ignored; blank lines are skipped), in the file's order. A file of one line is told from the JSON
  formats by its "caption" or "prompt" key.
- any other JSON object: MJHQ-30K's `meta_data.json` (`{id: {"category": str, "prompt": str}, ...}`), in the file's
  order; the category goes into the sidecar.
- a file that does not start with "{": text, one caption a line; the id is the 0-based line number zero-padded to 5
  digits. Blank lines are refused (they would shift every id after them), except at the end.

Captions are stripped. Ids name files: letters, digits, ".", "_" and "-", not starting with "." or "-". Refused,
naming the file and the line (or key, or annotation): a malformed entry, an empty caption, an unsafe id, an id
given twice (both places named), two ids that differ only in case (one file on macOS and Windows).
"""

import dataclasses
import json
import re
from pathlib import Path


CAPTION_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
TEXT_ID_DIGITS = 5
COCO_ID_DIGITS = 12


@dataclasses.dataclass(frozen=True)
class Caption:
    """One caption: its id (the output file's stem), the caption, where it is (for messages), its `line` (the line
    of a text or JSON Lines file, else its 1-based position; recorded in the sidecar) and `fields` for the sidecar."""

    id: str
    prompt: str
    where: str
    line: int
    fields: dict = dataclasses.field(default_factory=dict)


class _Object(dict):
    """A JSON object that remembers its first repeated key (`json` would keep the last value silently)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated = None
        if len(self) < len(pairs):
            first = {}
            for index, (key, _) in enumerate(pairs):
                if key in first:
                    self.repeated = (key, first[key], index)
                    break
                first[key] = index


def _caption(value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'{where}: "{key}" must be a non-empty string, got {json.dumps(value, ensure_ascii=False)}')
    return value.strip()


def _int(value, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{where}: "{key}" must be an integer >= 0, got {json.dumps(value)}')
    return value


def _read_text(lines: list[str], path: Path) -> list[Caption]:
    while lines and not lines[-1].strip():
        lines.pop()
    captions = []
    for number, line in enumerate(lines, start=1):
        where = f"{path} line {number}"
        if not line.strip():
            raise ValueError(
                f"{where}: blank line; a caption's line number is its id (and sets its seed), so remove it"
            )
        captions.append(Caption(f"{number - 1:0{TEXT_ID_DIGITS}d}", line.strip(), where, number))
    return captions


def _read_jsonl(lines: list[str], path: Path) -> list[Caption]:
    captions, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{where}: not valid JSON ({error.msg} at column {error.colno}); the file starts with '{{', so it is "
                "read as JSON Lines"
            ) from None
        if not isinstance(entry, dict):
            raise ValueError(
                f'{where}: expected a JSON object like {{"id": ..., "caption": ...}}, got {type(entry).__name__}'
            )
        if "caption" in entry and "prompt" in entry:
            raise ValueError(f'{where}: give "caption" or "prompt", not both')
        key = "caption" if "caption" in entry or "prompt" not in entry else "prompt"
        prompt = _caption(entry.get(key), where, key)
        raw = entry.get("id")
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise ValueError(
                f'{where}: "id" must be a string or an integer, got {json.dumps(raw, ensure_ascii=False)}'
            )
        caption_id = str(raw)
        if caption_id in seen:
            raise ValueError(f"{path}: id {caption_id!r} is given twice: line {seen[caption_id]} and line {number}")
        seen[caption_id] = number
        captions.append(Caption(caption_id, prompt, where, number))
    return captions


def _read_mjhq(data: _Object, path: Path) -> list[Caption]:
    if data.repeated is not None:
        key, first, second = data.repeated
        raise ValueError(f"{path}: id {key!r} is given twice: entries {first + 1} and {second + 1} of the object")
    captions = []
    for position, (caption_id, entry) in enumerate(data.items(), start=1):
        where = f"{path} key {caption_id!r}"
        if not isinstance(entry, dict):
            raise ValueError(
                f'{where}: expected an object like {{"category": ..., "prompt": ...}} (MJHQ-30K\'s meta_data.json), '
                f"got {type(entry).__name__}"
            )
        prompt = _caption(entry.get("prompt"), where, "prompt")
        fields = {"category": entry["category"]} if isinstance(entry.get("category"), str) else {}
        captions.append(Caption(caption_id, prompt, where, position, fields))
    return captions


def _read_coco(data: dict, path: Path) -> list[Caption]:
    annotations = data["annotations"]
    if not isinstance(annotations, list):
        raise ValueError(f'{path}: "annotations" must be a list (COCO\'s captions_*.json)')
    chosen, seen = {}, {}  # image id -> (annotation id, caption, index); annotation id -> index
    for index, annotation in enumerate(annotations):
        where = f"{path} annotations[{index}]"
        if not isinstance(annotation, dict):
            raise ValueError(
                f"{where}: expected an object with id, image_id and caption, got {type(annotation).__name__}"
            )
        annotation_id = _int(annotation.get("id"), where, "id")
        image_id = _int(annotation.get("image_id"), where, "image_id")
        caption = _caption(annotation.get("caption"), where, "caption")
        if annotation_id in seen:
            raise ValueError(
                f"{path}: annotation id {annotation_id} is given twice: annotations[{seen[annotation_id]}] and "
                f"annotations[{index}]"
            )
        seen[annotation_id] = index
        if image_id not in chosen or annotation_id < chosen[image_id][0]:
            chosen[image_id] = (annotation_id, caption, index)
    captions = []
    for position, image_id in enumerate(sorted(chosen), start=1):
        annotation_id, caption, index = chosen[image_id]
        fields = {"image_id": image_id, "annotation_id": annotation_id}
        captions.append(
            Caption(f"{image_id:0{COCO_ID_DIGITS}d}", caption, f"{path} annotations[{index}]", position, fields)
        )
    return captions


def read_captions(path: Path) -> tuple[str, list[Caption]]:
    """("txt" | "jsonl" | "mjhq" | "coco", the captions) of the caption file `path`, every entry checked (see the
    module docstring); a ValueError names the file and the entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"--captions {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    if not text.strip():
        raise ValueError(f"--captions {str(path)!r} holds no captions")
    lines = text.splitlines()
    if not text.lstrip().startswith("{"):
        kind, captions = "txt", _read_text(lines, path)
    else:
        try:
            data = json.loads(text, object_pairs_hook=_Object)
        except json.JSONDecodeError as error:
            first = next(line for line in lines if line.strip())
            try:
                one_line = isinstance(json.loads(first), dict)
            except json.JSONDecodeError:
                one_line = False
            if error.msg != "Extra data" and not one_line:
                raise ValueError(
                    f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
                ) from None
            data = None
        if data is None or "caption" in data or "prompt" in data:
            kind, captions = "jsonl", _read_jsonl(lines, path)  # several objects, or a single line
        elif "annotations" in data:
            kind, captions = "coco", _read_coco(data, path)
        else:
            kind, captions = "mjhq", _read_mjhq(data, path)
    if not captions:
        raise ValueError(f"--captions {str(path)!r} holds no captions")
    folded = {}
    for caption in captions:
        if not CAPTION_ID.fullmatch(caption.id):
            raise ValueError(
                f"{caption.where}: id {caption.id!r} cannot name a file: use letters, digits, '.', '_' and '-' (not "
                "first '.' or '-'), at most 200 characters"
            )
        other = folded.setdefault(caption.id.lower(), caption)
        if other is not caption:
            raise ValueError(
                f"{other.where} and {caption.where}: ids {other.id!r} and {caption.id!r} differ only in case; their "
                "images would be one file on case-insensitive file systems"
            )
    return kind, captions
