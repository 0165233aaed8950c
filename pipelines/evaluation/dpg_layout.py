"""DPG-Bench's files: its prompt folder and the grid folder its scorer reads.

DPG-Bench (github.com/TencentQQGYLab/ELLA, `dpg_bench/`) ships one prompt a file, `prompts/<item_id>.txt`. Its scorer,
`dpg_bench/compute_dpg_bench.py --image-root-path ROOT --resolution R --pic-num N`, reads ROOT this way:

- it tries every entry of ROOT (hidden files and folders too); one it cannot score (not an image, an unknown id) is
  skipped with a "Failed filename" line, and the score becomes a mean over fewer prompts;
- the item id of `ROOT/<name>` is `name.split('.')[0]`: everything before the FIRST dot;
- it crops N tiles of R x R pixels from the image, tile k at (left, top) = `TILE_ORIGINS[k]` x R, and averages the
  answers over them; N is 1 by default, 4 for the benchmark's four images a prompt.

So a run writes, under OUTDIR:

    OUTDIR/tiles/<item_id>/<k>.png, <k>.json   # image k and its sidecar, drawn by `batch_jobs` (resumable)
    OUTDIR/grids/<item_id>.png                 # the N tiles composed, tile k at TILE_ORIGINS[k]; nothing else

`grids/` holds only finished grids (each is written in its item's tiles folder and renamed into place), so it can
be the scorer's ROOT as it is. A grid records, in a PNG text chunk, the SHA-256 of the tile files it was composed
from: it is recomposed when that record differs from the tiles on disk (redrawn tiles, another -n), and left alone
otherwise, which costs a hash per tile instead of a PNG encoding per grid on every resume.
"""

import hashlib
import io
import json
import re
from pathlib import Path

from PIL import Image

from modeling_harmon.atomic_files import write_png


# (left, top) of tile k, in tiles: the scorer's crop order.
TILE_ORIGINS = ((0, 0), (1, 0), (0, 1), (1, 1))
MAX_TILES = len(TILE_ORIGINS)
# Item ids become file names and the scorer's key: no dot (the key stops at the first one), nothing but letters,
# digits, "_" and "-".
ITEM_ID = re.compile(r"[A-Za-z0-9_-]+")
GRID_CHUNK = "harmon-dpg"  # the PNG text chunk of a grid's record
GRID_FORMAT = "harmon-dpg-grid/1"


def scorer_key(name: str) -> str:
    """The item id DPG-Bench's scorer reads from a file name (everything before the first dot)."""
    return name.split(".")[0]


def _natural(text: str) -> list:
    """Sort key that puts "2" before "10" (ELLA's prompt files are numbered)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_dpg_prompts(folder: Path) -> list[tuple[str, Path, str]]:
    """(item id, file, prompt) for each `<item_id>.txt` file in `folder`, in natural order of ids. Other entries
    (other suffixes, sub-folders) are ignored: DPG-Bench's folder holds only the prompts. Each file is read as UTF-8
    and stripped. Refused, naming the files: two files the scorer would read as one id (`12.txt`, `12.v2.txt`), ids
    that are not safe file names or hold a dot, ids that differ only in case (one file on macOS and Windows), an
    empty prompt, a folder without prompt files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--prompts {str(folder)!r}: {'no such folder' if not folder.exists() else 'not a folder'}")
    files = sorted(path for path in folder.iterdir() if path.suffix == ".txt" and path.is_file())
    if not files:
        raise ValueError(f"--prompts {str(folder)!r} holds no <item_id>.txt prompt files")
    keys: dict[str, Path] = {}
    folded: dict[str, Path] = {}
    for path in files:
        key = scorer_key(path.stem)
        if key in keys:
            raise ValueError(
                f"--prompts: {str(keys[key])!r} and {str(path)!r} are one item id to DPG-Bench's scorer ({key!r}: it "
                "reads the id up to the first dot); rename or remove one"
            )
        if key.lower() in folded:
            raise ValueError(
                f"--prompts: {str(folded[key.lower()])!r} and {str(path)!r} have ids that differ only in case: their "
                "grids would be one file on case-insensitive file systems; rename one"
            )
        keys[key], folded[key.lower()] = path, path
    items = []
    for path in files:
        item_id = path.stem
        if not ITEM_ID.fullmatch(item_id):
            why = (
                f"DPG-Bench's scorer would read its id as {scorer_key(item_id)!r} (up to the first dot)"
                if "." in item_id
                else "an item id must be letters, digits, '_' and '-' only (it names the grid file)"
            )
            raise ValueError(f"--prompts: {str(path)!r}: {why}; rename it")
        try:
            prompt = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as error:
            raise ValueError(
                f"--prompts: {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})"
            ) from None
        if not prompt:
            raise ValueError(f"--prompts: {str(path)!r} is empty; each prompt file holds one prompt")
        items.append((item_id, path, prompt))
    return sorted(items, key=lambda item: _natural(item[0]))


def tile_stem(item_id: str, k: int) -> str:
    """Image k of an item, relative to the output folder, without its suffix."""
    return f"tiles/{item_id}/{k}"


def grids_folder(outdir: Path) -> Path:
    return Path(outdir) / "grids"


def grid_path(outdir: Path, item_id: str) -> Path:
    return grids_folder(outdir) / f"{item_id}.png"


def grid_size(num_tiles: int, tile: int) -> tuple[int, int]:
    """(width, height) of a grid of `num_tiles` tiles of `tile` px: as small as holds the scorer's first crops."""
    columns = 2 if num_tiles > 1 else 1
    rows = 2 if num_tiles > 2 else 1
    return columns * tile, rows * tile


def compose_grid(tiles: list, tile: int):
    """The grid of the PIL images `tiles` (each `tile` x `tile`), tile k at `TILE_ORIGINS[k]`; a cell without a
    tile (3 of 4) stays black and is never cropped by the scorer with --pic-num 3."""
    grid = Image.new("RGB", grid_size(len(tiles), tile))
    for image, (column, row) in zip(tiles, TILE_ORIGINS):
        grid.paste(image, (column * tile, row * tile))
    return grid


def read_grid_record(path: Path) -> dict | None:
    """The record a grid was written with (its `GRID_CHUNK` text chunk), or None where the file is missing, not a
    PNG, or not written by this module. Reads the header only."""
    try:
        with Image.open(path) as image:
            text = image.info.get(GRID_CHUNK)
        record = json.loads(text) if isinstance(text, str) else None
    except (OSError, ValueError, SyntaxError):  # missing, not an image (PIL raises SyntaxError on some), not JSON
        return None
    return record if isinstance(record, dict) and record.get("format") == GRID_FORMAT else None


def update_grid(outdir: Path, item_id: str, prompt: str, num_tiles: int, tile: int) -> bool:
    """Compose `grids/<item_id>.png` from its tile files unless it already records their bytes; returns whether it
    was written. The tiles are hashed and decoded from the same bytes, so a grid is what its record says."""
    outdir = Path(outdir)
    pictures, hashes = [], []
    for k in range(num_tiles):
        path = outdir / f"{tile_stem(item_id, k)}.png"
        data = path.read_bytes()
        hashes.append(hashlib.sha256(data).hexdigest())
        image = Image.open(io.BytesIO(data))
        if image.size != (tile, tile):
            raise ValueError(f"{str(path)!r} is {image.width}x{image.height} pixels, not the {tile}x{tile} of a tile")
        pictures.append(image.convert("RGB"))
    record = {"format": GRID_FORMAT, "id": item_id, "prompt": prompt, "tile_size": tile, "tiles": hashes}
    target = grid_path(outdir, item_id)
    if read_grid_record(target) == record:
        return False
    # Written beside the tiles, then renamed into grids/: the scorer's folder never holds a partial or temporary file.
    scratch = outdir / f"tiles/{item_id}/.grid.png"
    write_png(compose_grid(pictures, tile), scratch, {"prompt": prompt, GRID_CHUNK: json.dumps(record)})
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.replace(target)
    return True


def check_grids_folder(outdir: Path, item_ids: list[str], overwrite: bool) -> None:
    """Refuse, before anything is drawn, a grids folder the scorer would read more from than this run's grids:
    entries that are not `<item_id>.png` of this run (stray files, hidden files, folders, the scorer's own result
    files), and, unless `overwrite`, grids of this run's ids that this module did not write."""
    folder = grids_folder(outdir)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"--outdir: {str(folder)!r} is a file; the grids go in that folder")
    expected = {f"{item_id}.png" for item_id in item_ids}
    stray = sorted(entry.name for entry in folder.iterdir() if entry.name not in expected or not entry.is_file())
    if stray:
        raise ValueError(
            f"--outdir: {str(folder)!r} holds {len(stray)} entr{'y' if len(stray) == 1 else 'ies'} besides this "
            f"run's grids (first: {stray[0]!r}), which DPG-Bench's scorer would try to score; move them away (and give "
            "the scorer a --res-path outside that folder) or use another --outdir"
        )
    if not overwrite:
        foreign = sorted(
            name for name in expected if (folder / name).is_file() and not read_grid_record(folder / name)
        )
        if foreign:
            raise ValueError(
                f"--outdir: {str(folder)!r} holds {len(foreign)} grid(s) not composed by harmon (first: "
                f"{foreign[0]!r}); pass --overwrite to replace them, or use another --outdir"
            )
