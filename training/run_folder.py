"""The run folder (`--output-dir`) of a training run: checked before the model loads, never emptied behind a user's
back.

A fresh run needs a new or empty folder. A folder that already holds files is a run to continue (`--resume`) or to
train into again (`--overwrite`): then the `checkpoint-*` folders harmon wrote there are removed first, so a later
`--resume` cannot pick up a checkpoint of the replaced run, and `final/` is replaced atomically at the end. Other
files are left alone, and a checkpoint or `final/` that holds an input of the command, or that harmon did not write,
makes the run refuse to start. The folder gets harmon's marker (`modeling_harmon.output_folders`).
"""

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from modeling_harmon.output_folders import MARKER, OutputFolderError, check_output_folder, is_marked, write_marker

from .config import ConfigError


WRITER = "training.train"


def input_paths(config: dict, config_path: str | None) -> list[str]:
    """Local paths the run reads: the config file, the model, tokenizer, VAE and LLM folders, data and caches."""
    model = config["model"]
    paths = [config_path, model.get("path"), model.get("tokenizer"), model.get("vae"), model.get("llm")]
    for source in config["data"]["sources"]:
        paths += [source.get("path"), source.get("image_folder"), source.get("annotation_folder")]
    cache = config["data"]["latents_cache"]
    paths += cache if isinstance(cache, list) else [cache]
    return [str(path) for path in paths if isinstance(path, str) and path and os.path.exists(path)]


def prepare_run_folder(output_dir: str, resume: bool, overwrite: bool, inputs: Iterable[str], is_main: bool) -> Path:
    """Check `output_dir` as the module docstring says, make it (writable, marked) and, with `overwrite`, remove the
    checkpoints of the run it replaces. Raises [`ConfigError`] naming `--output-dir`. Only `is_main` writes."""
    folder = Path(output_dir)
    shown = f"--output-dir {str(folder)!r}"
    inputs = list(inputs)
    if resume and overwrite:
        raise ConfigError(
            "give --resume (continue the run in --output-dir) or --overwrite (train into it again), not both."
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{shown} exists and is not a folder.")
    entries = sorted(entry.name for entry in folder.iterdir() if entry.name != MARKER) if folder.is_dir() else []
    if entries and not resume and not overwrite:
        raise ConfigError(
            f"{shown} already holds {len(entries)} entries ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
            "pass --resume to continue that run, --overwrite to train into it again (harmon's checkpoints there "
            "are removed first), or choose a new folder."
        )
    checkpoints = sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []
    try:
        check_output_folder(folder / "final", overwrite=True, inputs=inputs, argument=f"{shown}: final/")
        if overwrite and not resume:
            for checkpoint in checkpoints:
                if not is_marked(checkpoint):
                    raise ConfigError(
                        f"{shown} holds {checkpoint.name}/, which harmon did not write; --overwrite removes "
                        "harmon's checkpoints only: move it away or choose a new folder."
                    )
                check_output_folder(checkpoint, overwrite=True, inputs=inputs, argument=f"{shown}: {checkpoint.name}/")
    except OutputFolderError as error:
        raise ConfigError(str(error)) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(f"{shown} is not a writable folder ({error.strerror or error}).")
    if is_main:
        if overwrite and not resume:
            for checkpoint in checkpoints:
                shutil.rmtree(checkpoint)
        if not is_marked(folder):
            write_marker(folder, WRITER)
    return folder
