"""HarmonConfig: presets, derived sizes, round trip."""

import pytest
import torch

from modeling_harmon import HarmonConfig, HarmonForConditionalGeneration


def _count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize(
    "preset, total, groups",
    [
        (
            "harmon-0.5b",
            770_630_899,
            {"vae": 66_456_019, "llm": 494_032_768, "mar": 207_156_768, "proj_in": 1_492_736, "proj_out": 1_492_608},
        ),
        (
            "harmon-1.5b",
            2_559_950_067,
            {"vae": 66_456_019, "llm": 1_543_714_304, "mar": 941_123_104, "proj_in": 4_328_448, "proj_out": 4_328_192},
        ),
    ],
)
def test_preset_parameter_counts(preset, total, groups):
    """VAE + unique LLM + MAR (without the unused class embedding) + projectors, as the reference (§1.3)."""
    with torch.device("meta"):
        model = HarmonForConditionalGeneration(HarmonConfig.from_preset(preset))
    inner = model.model
    assert model.lm_head.weight is inner.language_model.embed_tokens.weight
    found = {
        "vae": _count(inner.vae),
        "llm": _count(inner.language_model),
        "mar": _count(inner.mar_encoder) + _count(inner.mar_decoder) + _count(inner.diffusion_head),
        "proj_in": _count(inner.proj_in),
        "proj_out": _count(inner.proj_out),
    }
    assert found == groups
    assert _count(model) == total
    assert inner.vae.encoder.conv_in.weight.shape[0] == 128


def test_derived_sizes_come_from_vae_config(tiny_model):
    config = tiny_model.config
    assert config.vae_stride == 4 and config.vae_latent_channels == 4 and config.token_dim == 4
    assert config.image_grid == (8, 8)
    assert config.num_image_placeholders() == 8 * 8 + config.buffer_size
    assert config.num_image_placeholders(32, 48) == 8 * 12 + config.buffer_size
    kl16 = HarmonConfig.from_preset("harmon-0.5b")
    assert kl16.vae_stride == 16 and kl16.token_dim == 16 and kl16.vae_scaling_factor == 0.2325
    assert kl16.image_seq_length == 256 and kl16.num_image_placeholders(512, 512) == 1024 + 64


def test_config_round_trip(tmp_path, tiny_model):
    tiny_model.config.save_pretrained(tmp_path)
    loaded = HarmonConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == tiny_model.config.to_dict()
    assert loaded.text_config.model_type == "qwen2"
    assert set(loaded.auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        HarmonConfig(encoder_hidden_size=100, encoder_num_heads=12)
    with pytest.raises(ValueError, match="noise_schedule"):
        HarmonConfig(noise_schedule="sigmoid")
    with pytest.raises(ValueError, match="preset"):
        HarmonConfig.from_preset("harmon-7b")
