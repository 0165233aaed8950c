"""The understanding adapter: a PEFT adapter on the LLM that only the model's understanding paths use.

Harmon's one LLM both reads (questions, captions, the describe step of editing) and conditions the drawing. Teaching
it to read more (edit instructions, free phrasing) moved what it draws: the Shapes demo model's inpainting fell from
0.62 to 0.50 (training/configs/shapes/README.md, the fourteenth run). A checkpoint can therefore carry an adapter
for reading alone: `config.understanding_adapter` names a subfolder holding a PEFT adapter (`adapter_config.json`,
`adapter_model.safetensors`), loaded by `from_pretrained` under the adapter name `"understanding"`. Text generation
and `forward` run with it; every drawing path (text-to-image, inpainting, outpainting, variations, the drawing
step of an edit, the text-to-image losses) runs the LLM without it, so what the base weights draw stays bit for bit
what they drew before the adapter was trained.

transformers (`PeftAdapterMixin.load_adapter`) and peft do the loading, injection and the adapter's forward. Written
here: switching the adapter off for a drawing call (peft switches adapters for a whole model and marks them
trainable again when it turns them back on, which a per-call switch must not do), and saving a model that holds it
(transformers saves only the adapter of a model with adapters; a Harmon checkpoint needs its base weights too).
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from pathlib import Path

import torch


UNDERSTANDING_ADAPTER = "understanding"
# A PEFT layer's own parameters, and the wrapping that injection adds to a base layer's names.
_ADAPTER_KEY = re.compile(r"\.(lora_[A-Za-z_]+|modules_to_save)\.")
_WRAPPED = re.compile(r"\.(base_layer|original_module)\.")


def _adapter_layers(model) -> list:
    """The PEFT layers (LoRA layers, `modules_to_save` copies) inside `model`'s LLM."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # only a model holding an adapter needs peft, and loading the adapter needed it
        return []
    kinds = (BaseTunerLayer, AuxiliaryTrainingWrapper)
    return [module for module in model.model.language_model.modules() if isinstance(module, kinds)]


def has_understanding_adapter(model) -> bool:
    """Whether `model` holds the adapter its config names (loaded by `from_pretrained`)."""
    peft_config = getattr(model, "peft_config", None) or {}
    return bool(getattr(model.config, "understanding_adapter", None)) and UNDERSTANDING_ADAPTER in peft_config


@contextlib.contextmanager
def understanding_adapter_enabled(model, enabled: bool):
    """Run the block with the LLM's adapters on (`enabled`) or off, then put each back as it was; a no-op for a model
    without an understanding adapter. The flag set is the one peft's own `enable_adapters` sets, without the
    `requires_grad` changes that method makes."""
    if not has_understanding_adapter(model):
        yield
        return
    layers = _adapter_layers(model)
    before = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = not enabled
    try:
        yield
    finally:
        for layer, disabled in zip(layers, before):
            layer._disable_adapters = disabled


def load_understanding_adapter(model, source, subfolder: str | None, download_kwargs: dict) -> None:
    """Load the adapter in `source`'s subfolder `model.config.understanding_adapter` (a local folder or a Hub repo
    id, with `from_pretrained`'s download arguments), frozen, for inference."""
    name = model.config.understanding_adapter
    where = f"{subfolder}/{name}" if subfolder else name
    local = Path(str(source)) / where
    if Path(str(source)).is_dir() and not (local / "adapter_config.json").is_file():
        raise OSError(
            f"{source} says its understanding adapter is in {where}/ (config.understanding_adapter), but "
            f"{local / 'adapter_config.json'} does not exist; pass understanding_adapter=None to load the model "
            "without it."
        )
    kwargs = {key: value for key, value in download_kwargs.items() if value is not None}
    with warnings.catch_warnings():
        # peft warns that an adapter holding a copy of a tied embedding breaks the tie when merged; this adapter's
        # copy is meant to be apart from the output layer, and it is never merged (drawing needs the base weights).
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*", category=UserWarning)
        model.load_adapter(
            str(source),
            adapter_name=UNDERSTANDING_ADAPTER,
            is_trainable=False,
            adapter_kwargs={**kwargs, "subfolder": where},
        )


def base_state_dict(model) -> dict[str, torch.Tensor]:
    """`model`'s state dict as a model without the adapter has it: adapter weights left out, injected wrappers'
    names unwrapped."""
    return {_WRAPPED.sub(".", key): value for key, value in model.state_dict().items() if not _ADAPTER_KEY.search(key)}


def save_understanding_adapter(model, directory: Path) -> None:
    """Write the adapter in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`, keys under
    `base_model.model.`), which `PeftModel.from_pretrained` and `load_adapter` read."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights = model.get_adapter_state_dict(UNDERSTANDING_ADAPTER)
    weights = {f"base_model.model.{key}": value.detach().contiguous() for key, value in weights.items()}
    save_file(weights, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    # The base is the checkpoint around this subfolder, wherever it is copied to: no path to where it was trained.
    config = copy.deepcopy(model.peft_config[UNDERSTANDING_ADAPTER])
    config.base_model_name_or_path = None
    config.save_pretrained(str(directory))
