"""Output folders that never cost a user a file: marked when written, replaced only when ours and asked to, and
replaced atomically.

Every folder a harmon writer creates holds a marker file, `.harmon-output.json`. Before writing, a writer checks
its target ([`check_output_folder`]):

- missing, or an empty folder: written;
- a folder with files but no marker: refused, `--overwrite` or not (it holds somebody else's files);
- a folder with our marker: replaced only with `overwrite=True` (`--overwrite`);
- never replaced, even with `overwrite`: the current directory or a parent of it, a folder that holds an input of
  the command, a symbolic link, or something that is not a folder.

A replacement is built in a staging sibling, `.NAME.harmon-staging.HOST.PID.RANDOM`, then the old folder is renamed
aside (`.NAME.harmon-old.HOST.PID.RANDOM`), the new one renamed in, and the old one deleted. A kill at any point
leaves the old folder or the new one in place, plus a hidden sibling; the next writer of the same target on the
same host removes the siblings whose process is gone, and puts an old folder back if the kill came between the two
renames. Siblings of a live process (another rank of the same launch) and of other hosts are left alone.

Written by hand: neither `tempfile` nor `shutil` offers a replace-a-folder-atomically-and-recover operation.
"""

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


MARKER = ".harmon-output.json"
STAGING_TAG = "harmon-staging"
OLD_TAG = "harmon-old"


class OutputFolderError(ValueError):
    """An output folder that must not be written or replaced; the message names the argument and the way out."""


def is_marked(folder: str | os.PathLike) -> bool:
    """Whether `folder` was written by a harmon writer (it holds the marker file)."""
    return (Path(folder) / MARKER).is_file()


def write_marker(folder: str | os.PathLike, writer: str) -> None:
    """Mark `folder` as written by `writer` (e.g. "harmon convert"), so a later writer may replace it on request."""
    (Path(folder) / MARKER).write_text(json.dumps({"written_by": writer, "format": 1}) + "\n", encoding="utf-8")


def _holds(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (), argument: str = "--output"
) -> None:
    """Raise [`OutputFolderError`] (naming `argument`) unless `path` may be written: see the module docstring.

    `inputs`: paths the command reads (files or folders; None entries and Hub ids that are not local paths are
    ignored), which a replacement must never delete.
    """
    path = Path(path)
    shown = f"{argument} {str(path)!r}"
    if path.is_symlink():
        raise OutputFolderError(f"{shown} is a symbolic link; give the folder it points to, or a new folder.")
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputFolderError(f"{shown} exists and is not a folder; give a folder name.")
    resolved = path.resolve()
    if _holds(resolved, Path.cwd().resolve()):
        raise OutputFolderError(f"{shown} is the current directory or a parent of it; it is never replaced.")
    entries = [entry.name for entry in path.iterdir() if entry.name != MARKER]
    if not entries and not is_marked(path):
        return  # an empty folder loses nothing
    if not is_marked(path):
        raise OutputFolderError(
            f"{shown} already holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} that harmon did not "
            "write; give a new or empty folder (such a folder is never replaced, even with --overwrite)."
        )
    if not overwrite:
        raise OutputFolderError(f"{shown} already holds an earlier harmon output; pass --overwrite to replace it.")
    for item in inputs:
        if item is None or not os.path.exists(str(item)):
            continue
        if _holds(resolved, Path(item).resolve()):
            raise OutputFolderError(f"{shown} holds {str(item)!r}, an input of this command; it is never replaced.")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _sibling_prefix(path: Path, tag: str) -> str:
    return f".{path.name}.{tag}.{writer_id()}."


def _stale_siblings(path: Path) -> list[tuple[str, Path]]:
    """(tag, sibling) for this target's staging and old siblings left by dead processes of this host."""
    stale = []
    host = socket.gethostname()
    if not path.parent.is_dir():
        return stale
    for sibling in path.parent.iterdir():
        for tag in (STAGING_TAG, OLD_TAG):
            prefix = f".{path.name}.{tag}.{host}."
            if not sibling.name.startswith(prefix):
                continue
            pid = sibling.name[len(prefix) :].split(".", 1)[0]
            if pid.isdigit() and not _process_alive(int(pid)):
                stale.append((tag, sibling))
    return stale


def clean_stale_siblings(path: str | os.PathLike) -> list[Path]:
    """Remove the staging and old siblings of `path` whose writer is gone (putting an old folder back where the
    target is missing: its writer died between the two renames). Returns what was removed or restored."""
    path = Path(path)
    touched = []
    stale = _stale_siblings(path)
    # An old folder first: if the target is missing, it is the last complete output and comes back.
    for tag, sibling in sorted(stale, key=lambda item: item[0] != OLD_TAG):
        if tag == OLD_TAG and not path.exists() and is_marked(sibling):
            os.replace(sibling, path)
        elif sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        touched.append(sibling)
    return touched


def writer_id() -> str:
    """ "HOST.PID" of this process, as staging and old siblings carry it."""
    return f"{socket.gethostname()}.{os.getpid()}"


def staging_name(path: str | os.PathLike, owner: str | None = None) -> str:
    """A fixed name for a staging sibling of `path` that [`clean_stale_siblings`] recognises, for writers whose
    processes must agree on it (the ranks of one launch pass rank 0's [`writer_id`] as `owner`)."""
    return f".{Path(path).name}.{STAGING_TAG}.{owner or writer_id()}.0"


def swap_in_folder(staging: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the complete folder `staging` become `path`: an existing `path` is renamed aside first and deleted only
    after the new one is in place, so a kill leaves one of the two complete folders at `path` or aside (where
    [`clean_stale_siblings`] finds it). Both must be on one filesystem (siblings are)."""
    staging, path = Path(staging), Path(path)
    aside = None
    if path.exists():
        aside = Path(tempfile.mkdtemp(prefix=_sibling_prefix(path, OLD_TAG), dir=path.parent))
        os.replace(path, aside)  # onto the empty folder mkdtemp made
    os.replace(staging, path)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def usual_permissions(folder: str | os.PathLike) -> None:
    """Give `folder` and everything in it the modes a plain `mkdir()` / `open()` would (0o777 / 0o666 & ~umask).
    mkdtemp creates the staging folder 0700, and safetensors writes each weights file through a private temporary
    file (0600) that it renames into place, so a saved model would otherwise be unreadable to the group and others
    whatever the umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def replace_folder(
    path: str | os.PathLike,
    writer: str,
    overwrite: bool = False,
    inputs: Iterable = (),
    argument: str = "--output",
) -> Iterator[Path]:
    """Yield an empty staging folder to fill; on a normal exit it is marked as `writer`'s and becomes `path`
    atomically (see the module docstring), on an exception it is removed and `path` is left as it was.

    The target is checked ([`check_output_folder`]) before anything is written and again just before the rename.
    Call [`check_output_folder`] yourself first when the work before this point is long (loading a model).
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_folder(path, overwrite, inputs, argument)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(path)
    staging = Path(tempfile.mkdtemp(prefix=_sibling_prefix(path, STAGING_TAG), dir=path.parent))
    try:
        yield staging
        write_marker(staging, writer)
        usual_permissions(staging)
        check_output_folder(path, overwrite, inputs, argument)  # the target may have changed meanwhile
        swap_in_folder(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
