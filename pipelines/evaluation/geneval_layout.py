"""GenEval's files: the prompt metadata it ships and the image folder layout its scorer reads.

GenEval (github.com/djghosh13/geneval) ships `prompts/evaluation_metadata.jsonl`: one JSON object per line with
`tag` (single_object, two_object, counting, colors, position, color_attr), `include` (and sometimes `exclude`)
clauses and `prompt`. Its scorer, `evaluation/evaluate_images.py IMAGEDIR`, reads:

    IMAGEDIR/00000/metadata.jsonl      # that prompt's line, read whole with json.load (one object, no list)
    IMAGEDIR/00000/samples/0000.png    # the images; only names that begin with digits then ".png" are scored
    IMAGEDIR/00001/...

It skips every entry of IMAGEDIR that is not a folder named by digits only, and every file of `samples/` whose name
does not start with `<digits>.png`, so this package's sidecars (`0000.json`), its output marker and its temporary
files (which begin with a dot) sit beside the images without being scored. `iter_geneval_samples` reads a folder
the same way (a test keeps the two in step), so what our Shapes scorer sees is what GenEval's would see.
"""

import json
import re
from pathlib import Path


TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# GenEval's scorer takes a sample when re.match(SAMPLE_NAME, name) matches: digits then ".png" at the start.
SAMPLE_NAME = r"\d+\.png"


def prompt_folder(outdir: Path, index: int) -> Path:
    """The folder of prompt `index` (0-based, the line's position among the file's prompts), as GenEval's own
    generation script names it."""
    return Path(outdir) / f"{index:05d}"


def sample_stem(index: int, k: int) -> str:
    """Image k of prompt `index`, relative to the output folder, without its suffix."""
    return f"{index:05d}/samples/{k:04d}"


def read_geneval_metadata(path: Path) -> list[dict]:
    """The prompts of a GenEval metadata file, each line kept whole (the scorer reads the same object back from the
    prompt's folder). Errors name the file and line: a line that is not a JSON object, or lacks a non-empty string
    `prompt` or a string `tag`, or whose `include` is not a list of objects with a string `class` and an integer
    `count`. Blank lines are refused too: GenEval's generation script numbers the folders by line, so a blank line
    would shift every folder after it between tools."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"--metadata {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    entries = []
    for number, line in enumerate(lines, start=1):
        where = f"{path} line {number}"
        if not line.strip():
            raise ValueError(f"{where}: blank line; GenEval numbers prompt folders by line, so remove it")
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        if not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise ValueError(f'{where}: "prompt" must be a non-empty string, got {entry.get("prompt")!r}')
        if not isinstance(entry.get("tag"), str):
            raise ValueError(
                f'{where}: "tag" must be a string (GenEval\'s: {", ".join(TAGS)}), got {entry.get("tag")!r}'
            )
        for key in ("include", "exclude"):
            clauses = entry.get(key, [])
            if not isinstance(clauses, list) or not all(
                isinstance(clause, dict)
                and isinstance(clause.get("class"), str)
                and isinstance(clause.get("count"), int)
                and not isinstance(clause.get("count"), bool)
                for clause in clauses
            ):
                raise ValueError(f'{where}: "{key}" must be a list of {{"class": str, "count": int, ...}} clauses')
        entries.append(entry)
    if not entries:
        raise ValueError(f"--metadata {str(path)!r} holds no prompts")
    return entries


def iter_geneval_samples(imagedir: Path) -> list[tuple[dict, Path]]:
    """(metadata, image path) for every image GenEval's scorer would score in `imagedir`, by its rules (see the
    module docstring), in folder then file order."""
    samples = []
    for folder in sorted(Path(imagedir).iterdir()):
        if not folder.is_dir() or not folder.name.isdigit():
            continue
        metadata = json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8"))
        for image in sorted((folder / "samples").iterdir()):
            if image.is_file() and re.match(SAMPLE_NAME, image.name):
                samples.append((metadata, image))
    return samples
