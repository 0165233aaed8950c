"""The reference-checkpoint converter refuses what it cannot convert faithfully, and says what it dropped."""

import json
import os
from pathlib import Path

import pytest
import torch

from modeling_harmon.convert_harmon_weights_to_hf import (
    ConversionError,
    convert_harmon_checkpoint,
    convert_vae_state_dict,
    load_legacy_state_dict,
    main,
    vae_config_from_ldm,
)


REPO = Path(__file__).resolve().parents[1]
VECTOR_SET = Path(os.environ.get("HARMON_REF_VECTORS", REPO.parent / "shared" / "ref_vectors" / "tiny_a"))
pytestmark = pytest.mark.skipif(not VECTOR_SET.is_dir(), reason=f"vector set {VECTOR_SET} not found")


@pytest.fixture(scope="module")
def harmon_state():
    return load_legacy_state_dict(VECTOR_SET / "harmon_tiny.pth")


def _convert(tmp_path, harmon, mar_config=None, vae=VECTOR_SET / "kl16_tiny.ckpt", **kwargs):
    path = tmp_path / "harmon.pth"
    if isinstance(harmon, dict):
        torch.save(harmon, path)
    else:
        path = harmon
    return convert_harmon_checkpoint(
        path,
        vae,
        VECTOR_SET / "llm_hf",
        VECTOR_SET / "llm_hf",
        mar_config or VECTOR_SET / "config.json",
        tmp_path / "out",
        verbose=False,
        **kwargs,
    )


def test_cli_converts_and_reports_drops(tmp_path, capsys):
    main(
        [
            "--harmon-ckpt",
            str(VECTOR_SET / "harmon_tiny.pth"),
            "--vae-ckpt",
            str(VECTOR_SET / "kl16_tiny.ckpt"),
            "--tokenizer",
            str(VECTOR_SET / "llm_hf"),
            "--llm-config",
            str(VECTOR_SET / "llm_hf"),
            "--mar-config",
            str(VECTOR_SET / "config.json"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    printed = capsys.readouterr().out
    assert "mar.class_emb.weight" in printed
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "harmon" and config["image_token_id"] == 384
    tokenizer_config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tokenizer_config.get("image_token") == "<image>"
    assert "local_files_only" not in tokenizer_config  # a load option (HF_HUB_OFFLINE=1 here), not the tokenizer's
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging folder left behind"


def test_vae_mapping_keeps_encoder_attention():
    vae_state = load_legacy_state_dict(VECTOR_SET / "kl16_tiny.ckpt", wrapper_key="model")
    config = vae_config_from_ldm(vae_state, {}, sample_size=64)
    assert config["down_block_types"][-1] == "AttnDownEncoderBlock2D"
    converted = convert_vae_state_dict(vae_state, config)
    attention = [key for key in converted if key.startswith("encoder.down_blocks.4.attentions.")]
    assert len(attention) == 20 and not any(".attn." in key for key in converted)
    assert len(converted) == len(vae_state)


def test_wrapped_checkpoint_is_refused(tmp_path, harmon_state):
    with pytest.raises(ConversionError, match="wrapped"):
        _convert(tmp_path, {"state_dict": harmon_state})


def test_unexpected_and_missing_keys_are_listed(tmp_path, harmon_state):
    extra = dict(harmon_state, **{"mar.some_new_tensor": torch.zeros(3)})
    with pytest.raises(ConversionError, match="mar.some_new_tensor"):
        _convert(tmp_path, extra)
    missing = {key: value for key, value in harmon_state.items() if key != "mar.decoder_norm.bias"}
    with pytest.raises(ConversionError, match="mar_decoder.norm.bias"):
        _convert(tmp_path, missing)


def test_settings_that_contradict_the_weights_are_refused(tmp_path):
    settings = json.loads((VECTOR_SET / "config.json").read_text())
    settings["mar"]["encoder_embed_dim"] += 8
    path = tmp_path / "mar.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ConversionError, match="encoder_hidden_size"):
        _convert(tmp_path, VECTOR_SET / "harmon_tiny.pth", mar_config=path)
    del settings["mar"]["encoder_num_heads"]
    settings["mar"]["encoder_embed_dim"] -= 8
    path.write_text(json.dumps(settings))
    with pytest.raises(ConversionError, match="encoder_num_heads"):
        _convert(tmp_path, VECTOR_SET / "harmon_tiny.pth", mar_config=path)


def test_vae_inside_the_harmon_checkpoint_is_accepted(tmp_path, harmon_state):
    vae_state = load_legacy_state_dict(VECTOR_SET / "kl16_tiny.ckpt", wrapper_key="model")
    combined = dict(harmon_state, **{f"vae.{key}": value for key, value in vae_state.items()})
    model = _convert(tmp_path, combined, vae=None)
    (tmp_path / "again").mkdir()
    reference = _convert(tmp_path / "again", VECTOR_SET / "harmon_tiny.pth")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_default_image_size_must_fit_the_stride(tmp_path):
    with pytest.raises(ConversionError, match="--image-size must be a positive multiple of"):
        _convert(tmp_path, VECTOR_SET / "harmon_tiny.pth", image_size=7)
    assert not (tmp_path / "out").exists()
