"""`onednn_linears`: pre-packed oneDNN products stand in for `nn.Linear` inside the block, and only there."""

import pytest
import torch
from torch import nn

from modeling_harmon import modeling_harmon_onednn as onednn_linear
from modeling_harmon.modeling_harmon_onednn import onednn_linear_available, onednn_linears


needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build has no oneDNN linear")


def _layers(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.SiLU(), nn.Linear(40, 8, bias=False)).to(dtype)


@needs_onednn
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 24), (1, 24)])
def test_packed_products_equal_nn_linear(dtype, tolerance, shape):
    layers = _layers(dtype)
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        expected = layers(inputs)
        with onednn_linears(layers) as switched:
            assert switched == 2
            assert isinstance(layers[0].forward, onednn_linear._PackedLinearForward)
            actual = layers(inputs)
            assert layers[0].forward.packed is not None  # it really ran packed
    assert actual.dtype == dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tolerance, atol=tolerance)


@needs_onednn
def test_layers_are_restored_even_after_an_error():
    layers = _layers()
    with pytest.raises(RuntimeError, match="boom"), onednn_linears(layers):
        raise RuntimeError("boom")
    assert all("forward" not in layer.__dict__ for layer in layers)


@needs_onednn
def test_weights_changed_in_place_are_repacked():
    layer = _layers()[0]
    inputs = torch.randn(4, 24)
    with torch.no_grad(), onednn_linears(layer):
        before = layer(inputs)
        layer.weight.mul_(2)
        after = layer(inputs)
    torch.testing.assert_close(after - layer.bias, 2 * (before - layer.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_gradients_use_the_plain_product():
    layers = _layers()
    inputs = torch.randn(3, 24)
    with onednn_linears(layers):
        layers(inputs).sum().backward()
        assert layers[0].forward.packed is None  # never packed: a packed product has no gradient
    assert layers[0].weight.grad is not None and layers[0].weight.grad.abs().sum() > 0


@needs_onednn
def test_layers_that_do_not_run_are_not_packed_and_subclasses_are_left_alone():
    class CustomLinear(nn.Linear):
        pass

    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4), "custom": CustomLinear(4, 4)})
    with torch.no_grad(), onednn_linears(model) as switched:
        assert switched == 2
        assert "forward" not in model["custom"].__dict__
        model["used"](torch.randn(2, 4))
        assert model["used"].forward.packed is not None and model["unused"].forward.packed is None


def test_disabled_or_unavailable_switches_nothing(monkeypatch):
    layers = _layers()
    with onednn_linears(layers, enabled=False) as switched:
        assert switched == 0 and "forward" not in layers[0].__dict__
    monkeypatch.setattr(onednn_linear, "_available", False)
    with onednn_linears(layers) as switched:
        assert switched == 0
        layers(torch.randn(2, 24))
