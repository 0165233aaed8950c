"""Which Harmon the `harmon` command runs when `--model` is not given, and how a `--model` value is loaded.

The package can carry a small trained model in `harmon_pipelines/default_model/` (package data), so that the
command works offline out of the box. Until one is shipped there, the default is the tiny RANDOMLY INITIALISED
Harmon of `modeling_harmon.demo`: it exercises the whole path in seconds but draws noise and answers gibberish,
which the command says on stderr every time it is used.
"""

import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, AutoTokenizer
from transformers.utils import cached_file

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
    loaded = AutoModel.from_pretrained(model, dtype=dtype).to(device).eval()
    return loaded, AutoTokenizer.from_pretrained(model)


def load_processor(model: str | None, loaded_model, tokenizer):
    """The `HarmonProcessor` for VQA with `loaded_model`: the one saved with checkpoint `model` (folder or repo id)
    when it has `processor_config.json`, so its image size is honoured; otherwise one built from the model's config
    (`HarmonProcessor.from_model_config`, the processor that `harmon convert` saves)."""
    source = str(DEFAULT_MODEL_DIR) if model is None and DEFAULT_MODEL_DIR.is_dir() else model
    if source is not None and cached_file(source, "processor_config.json", _raise_exceptions_for_missing_entries=False):
        return AutoProcessor.from_pretrained(source)
    return HarmonProcessor.from_model_config(loaded_model.config, tokenizer)
