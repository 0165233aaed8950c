"""Pre-packed oneDNN matrix products for CPU inference.

Why this exists: `nn.Linear` on a CPU runs float32 through MKL's sgemm, which on AMD processors takes a slower code
path than the hardware allows (measured on the project's EPYC: 110 GFLOP/s against oneDNN's 263 GFLOP/s for the same
2048^3 float32 product, one thread), and every call re-lays-out the weight, which dominates the diffusion head's
8-row products (float32 408 us -> 160 us, bfloat16 147 us -> 80 us per 1024 x 1024 product). PyTorch ships oneDNN's
pre-packed linear as the private ops `torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise` (what
`torch.compile`'s CPU weight pre-packing emits), but only behind `torch.compile` with freezing; no library exposes
it for eager inference, so this module wraps those two ops. Results equal `nn.Linear`'s up to float rounding
(the products sum in another order).
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


_PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
_available: bool | None = None


def onednn_linear_available() -> bool:
    """Whether this PyTorch build can run pre-packed oneDNN linears (probed once with a tiny product)."""
    global _available
    if _available is None:
        try:
            weight, inputs = torch.ones(3, 2), torch.ones(1, 2)
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            output = torch.ops.mkldnn._linear_pointwise(inputs, packed, None, "none", [], "")
            _available = bool(torch.backends.mkldnn.is_available()) and torch.equal(output, torch.full((1, 3), 2.0))
        except (AttributeError, RuntimeError, NotImplementedError):
            _available = False
    return _available


class _PackedLinearForward:
    """Replacement `forward` of one `nn.Linear`: packs its weight at the first call it can serve (and again if the
    weight is changed in place), and falls back to the plain product for anything else (gradients, other devices or
    dtypes)."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.packed = None
        self.packed_version = None

    def _servable(self, inputs: torch.Tensor) -> bool:
        weight = self.layer.weight
        return (
            weight.device.type == "cpu"
            and weight.dtype in _PACKABLE_DTYPES
            and inputs.dtype == weight.dtype
            and inputs.device.type == "cpu"
            and not (torch.is_grad_enabled() and (weight.requires_grad or inputs.requires_grad))
        )

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not self._servable(inputs):
            return nn.functional.linear(inputs, layer.weight, layer.bias)
        if self.packed is None or self.packed_version != layer.weight._version:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), None)
            self.packed_version = layer.weight._version
        bias = None if layer.bias is None else layer.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(inputs, self.packed, bias, "none", [], "")


@contextlib.contextmanager
def onednn_linears(module: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every plain `nn.Linear` in `module` runs as a pre-packed oneDNN product when it can.

    Yields the number of layers switched (0 when `enabled` is False or this build lacks the ops). Each weight is
    packed lazily, at its layer's first call, so layers that do not run cost nothing; the packed copies (one more
    copy of those weights) are freed when the block exits, so weights changed after it are never served stale.
    Subclasses of `nn.Linear` (quantised layers, adapters) and layers whose `forward` is already replaced are left
    alone.
    """
    patched = []
    if enabled and onednn_linear_available():
        for layer in module.modules():
            if type(layer) is nn.Linear and "forward" not in layer.__dict__:
                layer.forward = _PackedLinearForward(layer)
                patched.append(layer)
    try:
        yield len(patched)
    finally:
        for layer in patched:
            del layer.forward


__all__ = ["onednn_linear_available", "onednn_linears"]
