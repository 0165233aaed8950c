"""Helpers for offline "load by repo id" tests: a hand-built Hub cache and child processes that use it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


def interpreters() -> list[str]:
    """This interpreter plus those in `HARMON_REMOTE_PYTHONS` (os.pathsep-separated; e.g. the newest transformers)."""
    extra = [path for path in os.environ.get("HARMON_REMOTE_PYTHONS", "").split(os.pathsep) if path]
    return [sys.executable] + extra


def make_offline_cache(cache: Path, repo_id: str, folder: Path, sha: str = FAKE_SHA) -> Path:
    """Put `folder` into `cache` as the `main` snapshot of `repo_id` (the layout huggingface_hub reads offline)."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(folder, repo / "snapshots" / sha, dirs_exist_ok=True)
    return Path(cache)


def child_env(tmp_path: Path, cache: Path | None = None, **extra) -> dict:
    """Environment of a fresh offline process with its own module cache (and Hub cache, if given)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(tmp_path) / "modules"), OMP_NUM_THREADS="1", **extra)
    if cache is not None:
        env["HF_HUB_CACHE"] = str(cache)
    return env


def run_python(python: str, script: str, cwd: Path, env: dict, args: list[str] = (), timeout: int = 600) -> str:
    """Run `script` (source text) with `python`; returns stdout, fails with the child's output on error."""
    path = Path(cwd) / "child_script.py"
    path.write_text(script)
    result = subprocess.run(
        [python, str(path), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{python} failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result.stdout
