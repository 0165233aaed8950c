"""Which Harmon the `harmon` command runs when `--model` is not given, and how a `--model` value is loaded.

The package can carry a small trained model in `harmon_pipelines/default_model/` (package data), so that the
command works offline out of the box. Until one is shipped there, the default is the tiny RANDOMLY INITIALISED
Harmon of `modeling_harmon.demo`: it exercises the whole path in seconds but draws noise and answers gibberish,
which the command says on stderr every time it is used.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, AutoTokenizer
from transformers.utils import cached_file
from transformers.utils import logging as transformers_logging

from modeling_harmon.configuration_harmon import HarmonConfig
from modeling_harmon.demo import build_random_model
from modeling_harmon.processing_harmon import HarmonProcessor


DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
# What output metadata names as the model when the random one runs (its `name_or_path` is empty).
RANDOM_MODEL_NAME = "random-tiny-harmon (modeling_harmon.demo.build_random_model(seed=0))"


def load_default_model(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the packaged default model, or of the tiny random Harmon if none is packaged."""
    if DEFAULT_MODEL_DIR.is_dir():
        return load_model_and_tokenizer(str(DEFAULT_MODEL_DIR), device=device, dtype=dtype)
    print(
        "NOTE: no trained default model is installed, so this runs a tiny RANDOMLY INITIALISED Harmon (images are "
        "noise, answers gibberish); pass --model PATH_OR_REPO for a real one.",
        file=sys.stderr,
    )
    model, tokenizer = build_random_model(seed=0)
    return model.to(device=device, dtype=dtype), tokenizer


def load_model_and_tokenizer(
    model: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """(model, tokenizer) in eval mode on `device` in `dtype`.

    Args:
        model: a local folder or a Hub repo id of a Harmon checkpoint (the folder that `harmon convert` writes, or
            any `save_pretrained` folder holding the tokenizer too); `None` means the default model (see
            [`load_default_model`]). The pip classes load it (importing this package registers them with the Auto
            classes), so no remote code runs.
        device, dtype: where and in which precision the weights live.
    """
    if model is None:
        return load_default_model(device=device, dtype=dtype)
    check_config_file(model)
    # transformers logs a multi-line load report and re-initialises what the weights lack; the report is checked
    # here instead, so a folder whose weights do not cover the model is refused rather than run half random.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        loaded, info = AutoModel.from_pretrained(
            model, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    check_loading_info(loaded, info)
    return loaded.to(device).eval(), AutoTokenizer.from_pretrained(model)


def _kind(value) -> str:
    return (
        "a boolean"
        if isinstance(value, bool)
        else "an integer"
        if isinstance(value, int)
        else ("a number" if isinstance(value, float) else "a string")
    )


def check_config_file(model: str) -> None:
    """Refuse a local folder whose `config.json` is not JSON or gives a Harmon setting the wrong type (e.g.
    `"encoder_hidden_size": "big"`): the config class would fail later with a message that names neither."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return  # a Hub id, or a folder without config.json: transformers says what is missing
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    if data.get("model_type") != HarmonConfig.model_type:
        return
    for key, default in HarmonConfig().to_dict().items():
        value = data.get(key)
        if key.startswith("_") or value is None or default is None or isinstance(default, (dict, list)):
            continue
        if isinstance(default, bool):
            fits = isinstance(value, bool)
        elif isinstance(default, int):
            fits = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            fits = isinstance(value, type(default))
        if not fits:
            raise ValueError(f'{path}: "{key}" must be {_kind(default)}, got {json.dumps(value)}')


def check_loading_info(model, info: dict) -> None:
    """Refuse weights that do not cover the model: missing tensors (other than ones tied to another tensor, e.g.
    lm_head.weight with tied embeddings), unexpected tensors, or tensors of another shape."""
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(info.get("missing_keys", ())) - tied)
    unexpected = sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(info.get("mismatched_keys", ()), key=lambda item: item[0])
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        key, stored, expected = mismatched[0]
        problems.append(
            f"{len(mismatched)} tensor(s) of another shape than the config gives (e.g. {key}: "
            f"{tuple(stored)} in the weights, {tuple(expected)} in the model)"
        )
    if problems:
        raise ValueError(f"its weights do not fit its config.json: {'; '.join(problems)}")


def load_processor(model: str | None, loaded_model, tokenizer):
    """The `HarmonProcessor` for VQA with `loaded_model`: the one saved with checkpoint `model` (folder or repo id)
    when it has `processor_config.json`, so its image size is honoured; otherwise one built from the model's config
    (`HarmonProcessor.from_model_config`, the processor that `harmon convert` saves)."""
    source = str(DEFAULT_MODEL_DIR) if model is None and DEFAULT_MODEL_DIR.is_dir() else model
    if source is not None and cached_file(
        source, "processor_config.json", _raise_exceptions_for_missing_entries=False
    ):
        return AutoProcessor.from_pretrained(source)
    return HarmonProcessor.from_model_config(loaded_model.config, tokenizer)
