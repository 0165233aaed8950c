"""The hand-written few-row product (`modeling_harmon_smallrows`, issue 27 item 4): it must give
`nn.Linear`'s results for every shape it serves, hand every other call to the forward the layer had, and be built
only into the folder it is given."""

import os

import pytest
import torch
from torch import nn

from modeling_harmon import modeling_harmon_smallrows as smallrows
from modeling_harmon.modeling_harmon_kernels import kernel_cache_path
from modeling_harmon.modeling_harmon_onednn import onednn_linears
from modeling_harmon.modeling_harmon_smallrows import (
    SMALL_ROWS,
    library_path,
    load_small_row_library,
    small_row_dtypes,
    small_row_linears,
)


FOLDER = kernel_cache_path().parent  # the tests' own temporary cache folder (conftest)


@pytest.fixture(scope="module")
def library():
    loaded = load_small_row_library(FOLDER)
    if loaded is None:
        pytest.skip("the few-row kernel cannot run here (no C compiler, or a CPU without AVX-512 and FMA)")
    return loaded


class _Counting:
    """Counts the calls one of the kernel's library functions receives."""

    def __init__(self, library, name: str = "harmon_small_rows_f32"):
        self.name, self.function, self.calls = name, getattr(library, name), 0

    def __call__(self, *args):
        self.calls += 1
        return self.function(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "rows, in_features, out_features, bias",
    [(1, 16, 32, True), (8, 1024, 1024, True), (5, 17, 33, False), (12, 64, 3072 // 8, True), (11, 47, 70, True)],
)
def test_matches_nn_linear(library, monkeypatch, rows, in_features, out_features, bias, dtype):
    """Every row count of a block, widths that are not multiples of a panel, odd inputs (bfloat16 reads pairs)."""
    if dtype not in small_row_dtypes(FOLDER):
        pytest.skip(f"the few-row kernel does not serve {dtype} on this CPU (bfloat16 needs AVX512-BF16)")
    torch.manual_seed(rows)
    layer = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    inputs = torch.randn(rows, in_features).to(dtype)
    with torch.no_grad():  # float32 sums of the same values: what both products approximate
        exact = nn.functional.linear(
            inputs.float(), layer.weight.float(), None if bias is False else layer.bias.float()
        )
    counting = _Counting(library, "harmon_small_rows_bf16" if dtype == torch.bfloat16 else "harmon_small_rows_f32")
    monkeypatch.setattr(library, counting.name, counting)
    with torch.no_grad(), small_row_linears(layer, FOLDER) as switched:
        output = layer(inputs)
    assert switched == 1 and counting.calls == 1
    assert output.shape == exact.shape and output.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(output, exact, rtol=1e-5, atol=1e-5)
    else:  # one rounding to bfloat16 (8 significant bits) at the end, as oneDNN's product
        torch.testing.assert_close(output.float(), exact, rtol=2**-8, atol=1e-3)
    assert "forward" not in layer.__dict__  # restored on exit


def test_leading_dimensions_and_non_contiguous_inputs(library):
    torch.manual_seed(0)
    layer = nn.Linear(40, 24)
    inputs = torch.randn(24, 3, 40).transpose(0, 1)[:, :5]  # (3, 5, 40), not contiguous: 15 rows
    with torch.no_grad(), small_row_linears(layer, FOLDER):
        output = layer(inputs)
    torch.testing.assert_close(output, nn.functional.linear(inputs, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_other_calls_reach_the_previous_forward(library, monkeypatch):
    """Many rows, float16, and calls that need gradients are not the kernel's: they go to the layer's previous
    forward (oneDNN's when its context is outside), which is back in place after the block."""
    layer = nn.Linear(32, 32)
    counting = _Counting(library)
    monkeypatch.setattr(library, "harmon_small_rows_f32", counting)
    with torch.no_grad(), onednn_linears(layer):
        previous = layer.__dict__.get("forward")
        with small_row_linears(layer, FOLDER):
            many = torch.randn(SMALL_ROWS + 1, 32)
            torch.testing.assert_close(layer(many), nn.functional.linear(many, layer.weight, layer.bias))
            assert counting.calls == 0
        assert layer.__dict__.get("forward") is previous
    with small_row_linears(layer, FOLDER):
        output = layer(torch.randn(2, 32))  # gradients on: the plain product
        assert output.requires_grad and counting.calls == 0
        half = nn.Linear(32, 32).to(torch.float16)
        with small_row_linears(half, FOLDER), torch.no_grad():
            half(torch.randn(2, 32, dtype=torch.float16))
        mixed = nn.Linear(32, 32)  # float32 weight, bfloat16 input: nn.Linear's own error, not the kernel's guess
        with small_row_linears(mixed, FOLDER), torch.no_grad(), pytest.raises(RuntimeError):
            mixed(torch.randn(2, 32, dtype=torch.bfloat16))
        assert counting.calls == 0


def test_a_weight_changed_in_place_is_packed_again(library):
    layer = nn.Linear(16, 16)
    inputs = torch.randn(3, 16)
    with torch.no_grad(), small_row_linears(layer, FOLDER):
        first = layer(inputs)
        layer.weight.mul_(2)
        second = layer(inputs)
    torch.testing.assert_close(second - layer.bias, 2 * (first - layer.bias), rtol=1e-5, atol=1e-5)


def test_built_once_into_the_given_folder_named_by_its_source(library, tmp_path, monkeypatch):
    monkeypatch.setattr(smallrows, "_library", None)  # as in a fresh process
    monkeypatch.setattr(smallrows, "_tried", set())
    folder = tmp_path / "kernels"
    loaded = load_small_row_library(folder)
    path = library_path(folder)
    assert loaded is not None and path.exists() and path.parent == folder
    assert path.name.startswith("harmon_small_rows_") and len(path.stem) == len("harmon_small_rows_") + 16
    assert sorted(item.name for item in folder.iterdir()) == [path.name]  # no build leftovers
    modified = os.stat(path).st_mtime_ns
    assert load_small_row_library(folder) is loaded and os.stat(path).st_mtime_ns == modified


def test_without_a_compiler_the_kernel_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(smallrows, "_library", None)
    monkeypatch.setattr(smallrows, "_tried", set())
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert load_small_row_library(tmp_path / "kernels") is None
    assert not (tmp_path / "kernels").exists() or not any((tmp_path / "kernels").iterdir())  # no half-built file
    layer = nn.Linear(8, 8)
    with small_row_linears(layer, tmp_path / "kernels") as switched:
        assert switched == 0 and "forward" not in layer.__dict__
