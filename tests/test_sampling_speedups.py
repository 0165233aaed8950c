"""The exact-equivalence shortcuts of `generate_images` (HarmonSamplingSpeedups): each one alone, and all together,
must give what the reference's work gives (every shortcut off), up to matmul rounding."""

import copy
import dataclasses

import pytest
import torch

from modeling_harmon import HarmonSamplingSpeedups
from modeling_harmon.modeling_harmon_kernels import DEFAULT_KERNELS, STAGES, kernel_cache_path
from modeling_harmon.modeling_harmon_smallrows import (
    load_small_row_library,
    small_row_dtypes,
    small_row_kernel_available,
)


FIELDS = [field.name for field in dataclasses.fields(HarmonSamplingSpeedups) if field.type in (bool, "bool")]


def _generate(model, tokenizer, speedups, **kwargs):
    previous = model.sampling_speedups
    model.sampling_speedups = speedups
    try:
        settings = dict(num_iter=4, guidance_scale=3.0, x0_clamp=2.0, height=32, width=48, temperature=0.9)
        settings.update(kwargs)
        generators = [torch.Generator().manual_seed(seed) for seed in (11, 12)]
        return model.generate_images(
            ["a red circle", "two blue squares"], tokenizer=tokenizer, generator=generators, **settings
        )
    finally:
        model.sampling_speedups = previous


@pytest.mark.parametrize("cfg_schedule", ["constant", "linear"])
@pytest.mark.parametrize("enabled", ["all", *FIELDS])
def test_each_shortcut_matches_the_reference_work(tiny_model, tokenizer, enabled, cfg_schedule):
    baseline = _generate(tiny_model, tokenizer, HarmonSamplingSpeedups.none(), cfg_schedule=cfg_schedule)
    speedups = (
        HarmonSamplingSpeedups()
        if enabled == "all"
        else dataclasses.replace(HarmonSamplingSpeedups.none(), **{enabled: True})
    )
    fast = _generate(tiny_model, tokenizer, speedups, cfg_schedule=cfg_schedule)
    scale = baseline.latents.abs().max()
    assert scale > 0
    assert float((fast.latents - baseline.latents).abs().max() / scale) < 1e-4
    assert float((fast.images - baseline.images).abs().max()) < 1e-4


@pytest.mark.parametrize(
    "kernels",
    [
        "default",
        *(f"all_{kernel}" for kernel in ("onednn", "smallrows")),
        *(f"{stage}_{kernel}" for kernel in ("onednn", "smallrows") for stage in STAGES),
    ],
)
def test_every_kernel_choice_the_tuning_can_make_matches_mkl(tiny_model, tokenizer, kernels, monkeypatch):
    """Each stage alone on oneDNN or on the few-row kernel, all of them on one, and the untuned default give the
    all-MKL (reference) images."""
    mkl = dataclasses.replace(HarmonSamplingSpeedups(), linear_kernels=dict.fromkeys(STAGES, "mkl"))
    kernel, calls = kernels.rsplit("_", 1)[-1], []
    if kernel == "smallrows":
        if not small_row_kernel_available(kernel_cache_path().parent):
            pytest.skip("the few-row kernel cannot run here (no C compiler, or a CPU without AVX-512 and FMA)")
        library = load_small_row_library(kernel_cache_path().parent)
        function = library.harmon_small_rows_f32
        monkeypatch.setattr(library, "harmon_small_rows_f32", lambda *args: calls.append(1) or function(*args))
    if kernels.startswith("all_"):
        chosen = dict.fromkeys(STAGES, kernel)
    elif kernels == "default":
        chosen = None
    else:
        chosen = {stage: kernel if kernels == f"{stage}_{kernel}" else "mkl" for stage in STAGES}
    baseline = _generate(tiny_model, tokenizer, mkl)
    fast = _generate(tiny_model, tokenizer, dataclasses.replace(mkl, linear_kernels=chosen))
    assert tiny_model.linear_kernels() == DEFAULT_KERNELS  # no tuned cache in tests (conftest)
    if kernels in ("all_smallrows", "diffusion_head_smallrows"):
        assert calls  # the head's few-row products went through the kernel
    scale = baseline.latents.abs().max()
    assert float((fast.latents - baseline.latents).abs().max() / scale) < 1e-4
    assert float((fast.images - baseline.images).abs().max()) < 1e-4


def test_shortcuts_without_guidance(tiny_model, tokenizer):
    baseline = _generate(tiny_model, tokenizer, HarmonSamplingSpeedups.none(), guidance_scale=1.0)
    fast = _generate(tiny_model, tokenizer, HarmonSamplingSpeedups(), guidance_scale=1.0)
    assert float((fast.latents - baseline.latents).abs().max() / baseline.latents.abs().max()) < 1e-4


def test_default_model_takes_every_shortcut(tiny_model):
    assert all(getattr(tiny_model.sampling_speedups, name) for name in FIELDS)
    assert not any(getattr(HarmonSamplingSpeedups.none(), name) for name in FIELDS)


def test_head_modulations_equal_the_plain_forward(tiny_model):
    head = tiny_model.model.diffusion_head
    generator = torch.Generator().manual_seed(0)
    rows, steps = 5, 3
    x = torch.randn(rows, tiny_model.config.token_dim, generator=generator)
    condition = torch.randn(rows, tiny_model.config.decoder_hidden_size, generator=generator)
    timesteps = torch.tensor([999, 500, 0])
    modulations = head.modulations(timesteps, condition)
    assert len(modulations) == len(head.res_blocks) + 1
    width = tiny_model.config.diffusion_head_width
    assert modulations[0].shape == (steps, rows, 3 * width) and modulations[-1].shape == (steps, rows, 2 * width)
    with torch.no_grad():
        for step in range(steps):
            plain = head(x, timesteps[step].expand(rows), condition)
            fast = head.forward_modulated(x, [tensor[step] for tensor in modulations])
            torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_head_modulations_are_processed_in_chunks(tiny_model, monkeypatch):
    """A tiny memory budget forces one step per chunk; the samples must not change."""
    from modeling_harmon import modeling_harmon_diffusion

    diffusion, head = tiny_model.model.diffusion, tiny_model.model.diffusion_head
    condition = torch.randn(3, tiny_model.config.decoder_hidden_size, generator=torch.Generator().manual_seed(1))

    def run():
        generator = torch.Generator().manual_seed(2)
        noise = lambda shape: torch.randn(shape, generator=generator)  # noqa: E731
        return diffusion.sample(
            head, condition, noise, unconditional=condition.flip(0), guidance_scale=2.0, num_steps=7, x0_clamp=3.0
        )

    whole = run()
    monkeypatch.setattr(modeling_harmon_diffusion, "_MODULATION_CHUNK_BYTES", 1)
    torch.testing.assert_close(run(), whole, rtol=1e-5, atol=1e-6)


def test_decoder_selected_positions_equal_the_full_output(tiny_model):
    decoder, config = tiny_model.model.mar_decoder, tiny_model.config
    generator = torch.Generator().manual_seed(3)
    grid = (4, 6)
    length = grid[0] * grid[1]
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[0, :10], mask[1, 5:15] = True, True
    encoded = torch.randn(2, config.buffer_size + length - 10, config.encoder_hidden_size, generator=generator)
    select = torch.zeros_like(mask)
    select[0, [1, 4, 9]], select[1, [5, 6, 14]] = True, True
    with torch.no_grad():
        full = decoder(encoded, mask, grid)
        selected = decoder(encoded, mask, grid, select=select)
    assert selected.shape == (2, 3, config.decoder_hidden_size)
    torch.testing.assert_close(selected.reshape(-1, selected.shape[-1]), full[select], rtol=1e-5, atol=1e-5)
    select[1, 7] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        decoder(encoded, mask, grid, select=select)


@pytest.mark.parametrize("kernel", ["onednn", "smallrows"])
def test_bfloat16_kernel_choices_stay_near_mkl(tiny_model, tokenizer, kernel, monkeypatch):
    """In bfloat16 every product rounds its float32 sum once, so kernels that sum in another order can differ by a
    rounding per product; the images must stay close to MKL's (the few-row kernel serves bfloat16 with AVX512-BF16).
    The tiny model's products are short enough that they often agree exactly."""
    calls = []
    if kernel == "smallrows":
        if torch.bfloat16 not in small_row_dtypes(kernel_cache_path().parent):
            pytest.skip("the few-row kernel does not serve bfloat16 here (no C compiler, or no AVX512-BF16)")
        library = load_small_row_library(kernel_cache_path().parent)
        function = library.harmon_small_rows_bf16
        monkeypatch.setattr(library, "harmon_small_rows_bf16", lambda *args: calls.append(1) or function(*args))
    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    mkl = dataclasses.replace(HarmonSamplingSpeedups(), linear_kernels=dict.fromkeys(STAGES, "mkl"))
    baseline = _generate(half, tokenizer, mkl)
    other = _generate(half, tokenizer, dataclasses.replace(mkl, linear_kernels=dict.fromkeys(STAGES, kernel)))
    assert other.latents.dtype == baseline.latents.dtype
    scale = baseline.latents.float().abs().max()
    assert float((other.latents.float() - baseline.latents.float()).abs().max() / scale) < 0.1
    assert float((other.images.float() - baseline.images.float()).abs().mean()) < 0.02
    assert (len(calls) > 0) == (kernel == "smallrows")  # the head's few-row products went through the kernel
