"""Output files that are never seen half-written: each is written to a temporary sibling and renamed into place
(folders: `output_folders.replace_folder`).

A reader (or a resumed job that checks which outputs exist) therefore sees either the old file, or none, or the
complete new one, even if the writer is killed midway.
"""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write to; on a normal exit it gets the usual permissions and is
    renamed to `path` (replacing it), on an exception it is removed and `path` is left untouched."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_png(image, path: str | os.PathLike, text: dict[str, str] | None = None) -> None:
    """Save the PIL `image` as a PNG at `path`, atomically; `text` becomes PNG text chunks (keyword -> value)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)  # iTXt: UTF-8, so prompts in any language survive
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", pnginfo=info)


def write_json(data, path: str | os.PathLike) -> None:
    """Write `data` as indented JSON (UTF-8, one trailing newline) at `path`, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
