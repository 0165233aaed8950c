"""Deepen a trained checkpoint's LLM without changing what it computes (`model.llm_depth` in a stage config).

A later stage can need more LLM than the earlier ones trained (the Shapes demo model's editing stage: its 3-layer
LLM could not carry a whole source scene into the drawing). Each new layer is a copy of the layer it follows with its
two output projections (attention's `o_proj`, the MLP's `down_proj`) set to zero, as in LLaMA Pro (Wu et al., 2024):
its residual branch then adds nothing, so the grown model starts as exactly the trained one, and the copies' own
weights start from trained values rather than noise. Written here because neither transformers nor peft grows a
model's depth in place.
"""

from __future__ import annotations

import copy

import torch


def _new_layers_after(old: int, new: int) -> list[int]:
    """How many new layers follow each of `old` layers, spread as evenly as whole numbers allow (the last gets any
    odd one first, so a single new layer goes at the top)."""
    return [((i + 1) * new) // old - (i * new) // old for i in range(old)]


def grow_llm_depth(model, depth: int) -> int:
    """Give `model`'s LLM `depth` decoder layers (at least as many as it has); returns how many were added.

    The model's output does not change: every added layer's residual branches are zero until training moves them.
    `config.text_config` gets the new `num_hidden_layers` (and `layer_types`), so `save_pretrained` writes a config
    that `from_pretrained` loads back."""
    language_model = model.model.language_model
    old_layers = list(language_model.layers)
    old = len(old_layers)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < old:
        raise ValueError(f"model.llm_depth must be an integer >= the checkpoint's {old} LLM layers, got {depth!r}.")
    if depth == old:
        return 0
    layers = []
    for layer, count in zip(old_layers, _new_layers_after(old, depth - old)):
        layers.append(layer)
        for _ in range(count):
            added = copy.deepcopy(layer)
            for projection in (added.self_attn.o_proj, added.mlp.down_proj):
                torch.nn.init.zeros_(projection.weight)
                if projection.bias is not None:
                    torch.nn.init.zeros_(projection.bias)
            layers.append(added)
    language_model.layers = torch.nn.ModuleList(layers)
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by it
    text_config = model.config.text_config
    layer_types = getattr(text_config, "layer_types", None)
    text_config.num_hidden_layers = depth
    if layer_types is not None:
        # a copy attends as the layer it was copied from
        text_config.layer_types = [
            kind
            for kind, count in zip(layer_types, _new_layers_after(old, depth - old))
            for kind in [kind] * (1 + count)
        ]
    return depth - old
