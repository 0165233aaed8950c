"""Hostile and careless uses of the commands that write folders: nothing a user made is ever deleted, a replacement is
atomic and survives kill -9, and every refusal is one clear line naming the argument (security audit, issue 19).

The writers share `modeling_harmon.output_folders`; its rules are tested once here and then through each writer's
command line: `harmon convert`, the Shapes data maker, the demo export, the VAE trainer and `training.train`.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modeling_harmon.output_folders import (
    MARKER,
    OLD_TAG,
    STAGING_TAG,
    OutputFolderError,
    check_output_folder,
    clean_stale_siblings,
    is_marked,
    replace_folder,
    staging_name,
    write_marker,
    writer_id,
)


REPO = Path(__file__).resolve().parents[1]
VECTOR_SET = Path(os.environ.get("HARMON_REF_VECTORS", REPO.parent / "shared" / "ref_vectors" / "tiny_a"))


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (relative path -> bytes): what must come through a refused command unchanged."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def hidden_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir()
    (path / "data" / "results.csv").write_text("1,2,3")
    return path


def our_folder(path: Path, content: str = "old output") -> Path:
    path.mkdir(parents=True)
    (path / "weights.txt").write_text(content)
    write_marker(path, "test")
    return path


# ---------------------------------------------------------------------------------------------------- the rules
def test_a_new_or_empty_folder_is_written_and_marked(tmp_path):
    for target in (tmp_path / "new" / "nested", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        with replace_folder(target, "test") as staging:
            (staging / "a.txt").write_text("a")
        assert (target / "a.txt").read_text() == "a" and is_marked(target)
        assert hidden_siblings(target) == []
        assert oct(target.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_a_replacement_gets_the_usual_permissions(tmp_path):
    """safetensors writes weights through a private (0600) temporary file; the folder's files must still get the
    modes the umask gives."""
    previous = os.umask(0o022)
    try:
        with replace_folder(tmp_path / "out", "test") as staging:
            (staging / "model.safetensors").write_bytes(b"weights")
            os.chmod(staging / "model.safetensors", 0o600)
            (staging / "sub").mkdir(mode=0o700)
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]}
    assert modes == {"out": 0o755, "model.safetensors": 0o644, "sub": 0o755, MARKER: 0o644}


REFUSALS = [
    # (what is there, overwrite, the words of the error)
    ("users", False, "harmon did not write"),
    ("users", True, "never replaced, even with --overwrite"),
    ("ours", False, "pass --overwrite"),
    ("file", True, "not a folder"),
    ("symlink", True, "symbolic link"),
]


@pytest.mark.parametrize("kind, overwrite, words", REFUSALS)
def test_what_is_refused_stays_untouched(tmp_path, kind, overwrite, words):
    target = tmp_path / "out"
    if kind == "users":
        users_folder(target)
    elif kind == "ours":
        our_folder(target)
    elif kind == "file":
        target.write_text("a file")
    else:
        users_folder(tmp_path / "real")
        target.symlink_to(tmp_path / "real")
    before = snapshot(tmp_path)
    with pytest.raises(OutputFolderError, match=words) as caught:
        with replace_folder(target, "test", overwrite=overwrite, argument="--output") as staging:
            (staging / "new.txt").write_text("new")
    assert str(caught.value).startswith("--output ")
    assert snapshot(tmp_path) == before and hidden_siblings(target) == []


def test_our_folder_is_replaced_with_overwrite(tmp_path):
    target = our_folder(tmp_path / "out")
    with replace_folder(target, "test", overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "new.txt"] and hidden_siblings(target) == []


def test_the_current_directory_its_parents_and_folders_holding_inputs_are_never_replaced(tmp_path, monkeypatch):
    work = our_folder(tmp_path / "work")
    (work / "sub").mkdir()
    before = snapshot(tmp_path)
    monkeypatch.chdir(work / "sub")
    for target, inputs in ((Path("."), ()), (Path(".."), ()), (tmp_path / "work", ())):
        with pytest.raises(OutputFolderError, match="current directory or a parent"):
            check_output_folder(target, overwrite=True, inputs=inputs)
    monkeypatch.chdir(tmp_path)
    (work / "checkpoint.pth").write_bytes(b"input")
    with pytest.raises(OutputFolderError, match="an input of this command"):
        with replace_folder(work, "test", overwrite=True, inputs=[work / "checkpoint.pth", None, "org/hub-id"]):
            pass
    assert snapshot(tmp_path) == {**before, "work/checkpoint.pth": b"input"}


def test_an_error_while_writing_leaves_the_old_folder(tmp_path):
    target = our_folder(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with replace_folder(target, "test", overwrite=True) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "weights.txt").read_text() == "old output" and hidden_siblings(target) == []


# Runs `replace_folder` in a child that SIGKILLs itself at one point: in its staging folder ("fill") or between the
# two renames ("swap"). The module is loaded from its file, so the child skips torch (about 0.1 s instead of 8 s).
KILLED_CHILD = textwrap.dedent("""
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("output_folders", sys.argv[1])
    folders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(folders)
    target, when = sys.argv[2], sys.argv[3]
    real_replace = os.replace
    def replace(source, destination):
        if when == "swap" and str(destination) == target:
            os.kill(os.getpid(), signal.SIGKILL)  # the old folder is aside, the new one not yet in
        return real_replace(source, destination)
    os.replace = replace
    with folders.replace_folder(target, "killed", overwrite=True) as staging:
        (staging / "weights.txt").write_text("new output")
        if when == "fill":
            os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("when", ["fill", "swap"])
def test_kill_9_never_loses_the_old_output_and_the_next_run_cleans_up(tmp_path, when):
    target = our_folder(tmp_path / "out")
    module = REPO / "modeling_harmon" / "output_folders.py"
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(module), str(target), when], capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = hidden_siblings(target)
    if when == "fill":
        assert (target / "weights.txt").read_text() == "old output" and [STAGING_TAG in name for name in left] == [
            True
        ]
    else:  # the target is gone for now; the complete old output waits aside, the complete new one in staging
        assert not target.exists() and sorted(OLD_TAG in name for name in left) == [False, True]
    clean_stale_siblings(target)  # what the next writer does first
    assert (target / "weights.txt").read_text() == "old output" and hidden_siblings(target) == []
    with replace_folder(target, "test", overwrite=True) as staging:
        (staging / "weights.txt").write_text("rerun")
    assert (target / "weights.txt").read_text() == "rerun" and hidden_siblings(target) == []


def test_siblings_of_live_writers_and_other_hosts_are_left_alone(tmp_path):
    target = our_folder(tmp_path / "out")
    live = tmp_path / staging_name(target)  # this process: alive, e.g. another rank of the same launch
    other_host = tmp_path / f".out.{STAGING_TAG}.some-other-host.1.0"
    users = tmp_path / ".out.backup"
    for folder in (live, other_host, users):
        folder.mkdir()
    assert clean_stale_siblings(target) == []
    assert live.is_dir() and other_host.is_dir() and users.is_dir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / staging_name(target, f"{writer_id().rsplit('.', 1)[0]}.{dead.stdout.strip()}")
    stale.mkdir()
    assert clean_stale_siblings(target) == [stale] and not stale.exists() and live.is_dir()


# ------------------------------------------------------------------------------------------------ the commands
def run_cli(argv, capsys):
    from harmon_pipelines.cli import main

    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.err


def convert_arguments(output, harmon=VECTOR_SET / "harmon_tiny.pth", *extra):
    return [
        "convert",
        "--harmon-ckpt",
        str(harmon),
        "--vae-ckpt",
        str(VECTOR_SET / "kl16_tiny.ckpt"),
        "--tokenizer",
        str(VECTOR_SET / "llm_hf"),
        "--llm-config",
        str(VECTOR_SET / "llm_hf"),
        "--mar-config",
        str(VECTOR_SET / "config.json"),
        "--output",
        str(output),
        *extra,
    ]


def test_convert_refuses_before_reading_the_checkpoint(tmp_path, capsys, monkeypatch):
    """The refusals come before any weights are read, so they need no real checkpoint."""
    checkpoint = tmp_path / "in" / "harmon.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not read")
    users_folder(tmp_path / "mine")
    ours = our_folder(tmp_path / "earlier")
    here = our_folder(tmp_path / "here")
    holding = our_folder(tmp_path / "holding")
    (holding / "harmon.pth").write_bytes(b"input")
    before = snapshot(tmp_path)
    cases = [
        (tmp_path / "mine", [], "harmon did not write"),
        (tmp_path / "mine", ["--overwrite"], "never replaced"),
        (ours, [], "--overwrite"),
        (holding, ["--overwrite"], "an input of this command"),
        (Path("."), ["--overwrite"], "current directory"),
    ]
    monkeypatch.chdir(here)
    for output, extra, words in cases:
        harmon = holding / "harmon.pth" if output == holding else checkpoint
        args = convert_arguments(output, harmon, *extra)
        for flag in ("--vae-ckpt", "--tokenizer", "--llm-config", "--mar-config"):
            args[args.index(flag) + 1] = str(checkpoint if flag == "--vae-ckpt" else checkpoint.parent)
        status, err = run_cli(args, capsys)
        assert status == 2 and err.count("\n") == 1 and words in err and "--output" in err, (output, err)
        assert "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(not VECTOR_SET.is_dir(), reason=f"vector set {VECTOR_SET} not found")
def test_convert_replaces_its_own_output_only_with_overwrite(tmp_path, capsys):
    output = tmp_path / "out"
    assert run_cli(convert_arguments(output), capsys)[0] == 0
    assert is_marked(output) and hidden_siblings(output) == []
    first = snapshot(output)
    status, err = run_cli(convert_arguments(output), capsys)
    assert status == 2 and "--overwrite" in err and snapshot(output) == first
    assert run_cli(convert_arguments(output, VECTOR_SET / "harmon_tiny.pth", "--overwrite"), capsys)[0] == 0
    assert snapshot(output).keys() == first.keys() and hidden_siblings(output) == []


@pytest.mark.parametrize(
    "module, extra",
    [
        ("training.shapes.make_data", ["--scenes", "2"]),
        ("training.shapes.train_vae", ["--steps", "1"]),
        ("training.shapes.export_default", ["--model", "unused"]),
    ],
)
def test_shapes_writers_refuse_a_users_folder(tmp_path, capsys, module, extra):
    main = importlib.import_module(module).main
    mine = users_folder(tmp_path / "mine")
    before = snapshot(mine)
    for flags in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as stop:
            main(["--output", str(mine), *extra, *flags])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and "--output" in err and "harmon did not write" in err
    assert snapshot(mine) == before


def test_make_data_replaces_its_own_folder_only_with_overwrite(tmp_path, capsys):
    from training.shapes.make_data import main

    output = tmp_path / "data"
    main(["--output", str(output), "--scenes", "2"])
    assert is_marked(output) and (output / "captions.jsonl").is_file()
    with pytest.raises(SystemExit) as stop:
        main(["--output", str(output), "--scenes", "3"])
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    main(["--output", str(output), "--scenes", "3", "--overwrite"])
    assert len((output / "captions.jsonl").read_text().splitlines()) == 3 and hidden_siblings(output) == []


def test_the_embedded_model_folder_is_marked_so_its_recipe_can_replace_it():
    from harmon_pipelines.default_model import DEFAULT_MODEL_DIR
    from training.shapes.demo_card import RECIPE_COMMANDS

    assert is_marked(DEFAULT_MODEL_DIR)
    lines = RECIPE_COMMANDS.splitlines()
    export = next(
        number
        for number, line in enumerate(lines)
        if "training.shapes.export_default" in line and "--output pipelines/default_model" in line
    )
    assert "--overwrite" in " ".join(lines[export : export + 2])
