"""`model.llm_depth` (training/llm_growth.py): a trained checkpoint's LLM grows deeper without changing what the
model computes (conditioning for drawing, answers with a KV cache), the grown model saves and loads as itself,
training reaches the new layers, and a depth that would drop layers is refused by name."""

import pytest
import torch

from modeling_harmon import HarmonForConditionalGeneration
from training.config import ConfigError, load_config
from training.llm_growth import _new_layers_after, grow_llm_depth
from training.model_init import load_model

from .test_vocabulary_growth import plain_checkpoint  # noqa: F401  (a 1-layer checkpoint fixture)


def _ids(model):
    return torch.tensor([[5, 9, 12, 7, 3]]) % model.config.text_config.vocab_size


def _condition(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = model.model.encode_images(torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1)
    seq_len = latents.shape[1] * latents.shape[2]
    mask = torch.stack([torch.randperm(seq_len, generator=generator) < seq_len // 2 for _ in range(2)])
    ids = _ids(model).repeat(2, 1)
    return model.generation_condition(ids, torch.ones_like(ids), latents, mask)[0]


def test_new_layers_are_spread_evenly():
    assert _new_layers_after(3, 3) == [1, 1, 1]
    assert _new_layers_after(3, 6) == [2, 2, 2]
    assert _new_layers_after(3, 1) == [0, 0, 1]
    assert _new_layers_after(4, 2) == [0, 1, 0, 1]
    assert sum(_new_layers_after(5, 7)) == 7


def test_a_grown_model_computes_what_the_checkpoint_did(plain_checkpoint, tmp_path):  # noqa: F811
    before, _ = load_model({"init": "pretrained", "path": str(plain_checkpoint)})
    grown, _ = load_model({"init": "pretrained", "path": str(plain_checkpoint), "llm_depth": 3})
    before.eval(), grown.eval()
    layers = grown.model.language_model.layers
    assert len(layers) == grown.config.text_config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2]
    assert not layers[1].mlp.down_proj.weight.any() and layers[1].mlp.gate_proj.weight.any()
    with torch.no_grad():
        torch.testing.assert_close(_condition(grown), _condition(before), rtol=0, atol=0)
        torch.testing.assert_close(grown(input_ids=_ids(grown)).logits, before(input_ids=_ids(before)).logits)
        # the KV cache is indexed by layer_idx: greedy decoding with it must agree too
        kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(
            grown.generate(input_ids=_ids(grown), **kwargs), before.generate(input_ids=_ids(before), **kwargs)
        )

    grown.save_pretrained(tmp_path / "grown")
    reloaded = HarmonForConditionalGeneration.from_pretrained(tmp_path / "grown")
    assert len(reloaded.model.language_model.layers) == 3
    with torch.no_grad():
        torch.testing.assert_close(_condition(reloaded.eval()), _condition(grown), rtol=0, atol=0)


def test_training_reaches_the_new_layers(plain_checkpoint):  # noqa: F811
    grown, _ = load_model({"init": "pretrained", "path": str(plain_checkpoint), "llm_depth": 2})
    grown.train()
    loss = grown(input_ids=_ids(grown), labels=_ids(grown)).loss
    loss.backward()
    added = grown.model.language_model.layers[1]
    # Zero output projections still get gradients (their inputs are not zero); q/k/v start without any.
    assert added.self_attn.o_proj.weight.grad.abs().sum() > 0
    assert added.mlp.down_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depth", [0, True, 1.5, "3"])
def test_a_bad_depth_is_refused_by_name(plain_checkpoint, depth):  # noqa: F811
    with pytest.raises(ConfigError, match="llm_depth"):
        load_model({"init": "pretrained", "path": str(plain_checkpoint), "llm_depth": depth})


def test_growing_to_fewer_layers_is_refused(plain_checkpoint):  # noqa: F811
    model, _ = load_model({"init": "pretrained", "path": str(plain_checkpoint), "llm_depth": 2})
    with pytest.raises(ValueError, match=r"llm_depth must be an integer >= the checkpoint's 2"):
        grow_llm_depth(model, 1)


def test_the_config_checks_llm_depth(tmp_path):
    with pytest.raises(ConfigError, match="llm_depth must be a positive integer"):
        load_config(None, ["model.llm_depth=-1"])
    with pytest.raises(ConfigError, match="init: pretrained"):
        load_config(None, ["model.init=from_config", "model.llm_depth=4"])
