"""LoRA on Harmon with `peft`: adapters on the LLM, the MAR / diffusion-head groups trained fully or frozen.

PEFT does the work; this module only translates the training config into a `LoraConfig` (which modules get
adapters, which are trained as full copies) and merges a saved adapter back into a plain checkpoint.
"""

import re

from peft import LoraConfig, PeftModel, get_peft_model

from .config import ConfigError
from .trainer import group_of


# Harmon modules that PEFT can keep as full trainable copies (`modules_to_save`), per parameter group.
FULL_MODULES = {
    "mar_encoder": ["mar_encoder", "proj_in"],
    "mar_decoder": ["proj_out", "mar_decoder", "diffusion_head"],
}


def apply_lora(model, lora: dict, groups: dict):
    """Wrap `model` with LoRA adapters on `lora.target_modules` (a regex over module names, default: the LLM's
    attention and MLP projections). `lora.modules_to_save` and the groups marked trainable other than the LLM are
    trained fully via `modules_to_save`; everything else is frozen."""
    modules_to_save = list(lora.get("modules_to_save") or [])
    for group, names in FULL_MODULES.items():
        if groups.get(group, {}).get("trainable", False):
            modules_to_save += names
    config = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=lora["target_modules"],
        modules_to_save=modules_to_save or None,
    )
    wrapped = get_peft_model(model, config)
    targeted = [name for name, module in wrapped.named_modules() if name.endswith("lora_A")]
    if not targeted:
        raise ConfigError(f"lora.target_modules {lora['target_modules']!r} matched no module of the model.")
    unmatched = [
        name
        for name, p in wrapped.named_parameters()
        if p.requires_grad and "lora_" not in name and group_of(name, groups) is None
    ]
    if unmatched:
        raise ConfigError(f"trainable parameters outside every optim group after LoRA: {unmatched[:5]}")
    return wrapped


def merge_adapter(base_model, adapter_dir: str):
    """A plain Harmon with the adapter at `adapter_dir` merged into `base_model`'s weights."""
    merged = PeftModel.from_pretrained(base_model, adapter_dir).merge_and_unload()
    for name, _ in merged.named_parameters():
        if re.search(r"lora_|modules_to_save", name):
            raise RuntimeError(f"merge left a PEFT parameter behind: {name}")
    return merged
