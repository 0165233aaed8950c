"""CPU kernel choice by measurement (issue 27): `tune_for_host` measures every kernel per stage and caches the fastest
in the user's cache (never the model folder), keyed so that another size or model shape is not served by it; the
cache is what later generations use; a damaged cache reads as none; `harmon tune` prints and writes it."""

import dataclasses
import json

import pytest
import torch

from harmon_pipelines.cli import main
from modeling_harmon import HarmonSamplingSpeedups
from modeling_harmon.modeling_harmon_kernels import (
    DEFAULT_KERNELS,
    STAGES,
    cache_key,
    check_kernels,
    choose_kernels,
    kernel_cache_path,
    read_cache,
    write_cache_entry,
)
from modeling_harmon.modeling_harmon_smallrows import small_row_kernel_available


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "linear_kernels.json"
    monkeypatch.setenv("HARMON_KERNEL_CACHE", str(path))
    return path


def test_tuning_measures_every_kernel_and_later_calls_use_the_choice(tiny_model, cache, monkeypatch):
    calls = []
    original = type(tiny_model).generate_images

    def counted(self, *args, **kwargs):
        calls.append((self.sampling_speedups.linear_kernels, kwargs["num_iter"], kwargs["height"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "generate_images", counted)
    result = tiny_model.tune_for_host(height=32, width=32, num_iter=2, num_sampling_steps=2)
    # The few-row kernel is measured too where it runs (a float32 model, a C compiler, AVX-512).
    measured = ("mkl", "onednn", "smallrows") if small_row_kernel_available(cache.parent) else ("mkl", "onednn")
    assert [kernels for kernels, _, _ in calls] == [dict.fromkeys(STAGES, kernel) for kernel in measured for _ in "ab"]
    assert {(steps, height) for _, steps, height in calls} == {(2, 32)}
    assert set(result["seconds"]) == set(measured)
    assert all(set(result["seconds"][kernel]) == set(STAGES) for kernel in result["seconds"])
    assert all(value > 0 for kernel in result["seconds"].values() for value in kernel.values())
    assert result["kernels"] == choose_kernels(result["seconds"])
    assert result["cache"] == str(cache) == str(kernel_cache_path())
    assert read_cache()[result["key"]]["kernels"] == result["kernels"]
    assert tiny_model.sampling_speedups == HarmonSamplingSpeedups()  # restored
    assert tiny_model.linear_kernels(32, 32) == result["kernels"]
    assert tiny_model.linear_kernels(32, 48) == DEFAULT_KERNELS  # another size: not tuned


def test_a_cached_choice_is_used_by_generation_and_an_explicit_one_wins(tiny_model, tokenizer, cache, monkeypatch):
    onednn = dict.fromkeys(STAGES, "onednn")
    write_cache_entry(cache_key(tiny_model, 32, 32), {"kernels": onednn})
    assert tiny_model.linear_kernels() == onednn
    seen = []
    from modeling_harmon import modeling_harmon

    original = modeling_harmon.stage_kernels

    def recorded(inner, kernels, onednn_linears):
        seen.append(dict(kernels))
        return original(inner, kernels, onednn_linears)

    monkeypatch.setattr(modeling_harmon, "stage_kernels", recorded)
    settings = dict(tokenizer=tokenizer, num_iter=2, num_sampling_steps=2, guidance_scale=1.0)
    tiny_model.generate_images("a red circle", **settings)
    explicit = {**DEFAULT_KERNELS, "mar_decoder": "onednn"}
    previous = tiny_model.sampling_speedups
    try:
        tiny_model.sampling_speedups = dataclasses.replace(previous, linear_kernels=explicit)
        tiny_model.generate_images("a red circle", **settings)
        tiny_model.sampling_speedups = dataclasses.replace(previous, onednn_linears=False)
        tiny_model.generate_images("a red circle", **settings)  # the reference's products: no kernel choice at all
    finally:
        tiny_model.sampling_speedups = previous
    assert seen == [onednn, explicit]


def test_damaged_or_foreign_caches_read_as_empty_and_writes_keep_other_entries(tiny_model, cache):
    cache.parent.mkdir(parents=True)
    for text in ("{not json", "[1, 2]", json.dumps({"entries": {cache_key(tiny_model, 32, 32): {"kernels": "x"}}})):
        cache.write_text(text)
        assert tiny_model.linear_kernels(32, 32) == DEFAULT_KERNELS
    write_cache_entry("other host", {"kernels": DEFAULT_KERNELS})
    write_cache_entry("another", {"kernels": DEFAULT_KERNELS})
    assert set(read_cache()) >= {"other host", "another"}
    assert not list(cache.parent.glob(".*"))  # no temporary file left


def test_the_key_names_the_processor_torch_threads_dtype_layers_and_size(tiny_model):
    key = cache_key(tiny_model, 32, 48)
    assert f"torch {torch.__version__}" in key and f"{torch.get_num_threads()} threads" in key
    assert str(tiny_model.dtype) in key and key.endswith("32x48")
    assert cache_key(tiny_model, 32, 32) != key


def test_kernel_choices_are_checked():
    assert check_kernels(DEFAULT_KERNELS) == DEFAULT_KERNELS
    for bad in ({"llm": "mkl"}, {**DEFAULT_KERNELS, "llm": "cuda"}, None):
        with pytest.raises(ValueError, match="linear kernels must map each of"):
            check_kernels(bad)
    seconds = {"mkl": dict.fromkeys(STAGES, 1.0), "onednn": {**dict.fromkeys(STAGES, 1.0), "diffusion_head": 0.5}}
    assert choose_kernels(seconds) == {**DEFAULT_KERNELS, "diffusion_head": "onednn"}  # ties keep MKL
    seconds["smallrows"] = {**dict.fromkeys(STAGES, 2.0), "diffusion_head": 0.25, "llm": 0.75}
    assert choose_kernels(seconds) == {**DEFAULT_KERNELS, "diffusion_head": "smallrows", "llm": "smallrows"}
    assert check_kernels(dict.fromkeys(STAGES, "smallrows")) == dict.fromkeys(STAGES, "smallrows")


def test_harmon_tune_prints_the_table_and_writes_the_user_cache(tiny_dir, cache, capsys):
    before = sorted(path.name for path in tiny_dir.iterdir())
    arguments = ["tune", "--model", str(tiny_dir), "--steps", "2", "--head-steps", "2", "--size", "32"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "stage" in out and "diffusion_head" in out and f"wrote {cache}" in out
    assert len(read_cache()) == 1
    assert sorted(path.name for path in tiny_dir.iterdir()) == before  # nothing in the model folder
    assert main([*arguments, "--dry-run", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["kernels"]) == set(STAGES) and "cache" not in printed
    assert main(["tune", "--model", str(tiny_dir), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["tune", "--model", str(tiny_dir), "--sampling", "nope", "--dry-run"]) == 2
    assert "--sampling nope: sampling must be one of this model's sampling presets" in capsys.readouterr().err
