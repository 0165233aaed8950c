"""Gradient checkpointing recomputes each block exactly once and leaves the gradients unchanged; and which
attention `attn_implementation` selects (the LLM's) and which it does not (the MAR blocks', always SDPA).

Block runs are counted with the hooks of `benchmarks/checkpointing_recompute.py` (a forward pre-hook on the first
sub-module each block calls): 1 per training step without checkpointing, 2 with it (forward + one recompute).
"""

import copy

import pytest
import torch

from benchmarks.checkpointing_recompute import BLOCKS, build, count_block_starts, gradients, main, step_inputs


# mode -> (gradient checkpointing kwargs, torch's early stop of non-reentrant recomputation)
MODES = {
    "non-reentrant": ({"use_reentrant": False}, True),
    "reentrant": ({"use_reentrant": True}, True),
    "non-reentrant, no early stop": ({"use_reentrant": False}, False),
}


@pytest.fixture(scope="module")
def reference():
    """(inputs, block starts, gradients) of one training step without checkpointing (dropout on, seeded)."""
    model, tokenizer = build(None)
    inputs = step_inputs(model, tokenizer, batch=2)
    return inputs, count_block_starts(model, inputs, early_stop=True), gradients(model)


def test_without_checkpointing_each_block_runs_once(reference):
    _, calls, _ = reference
    assert calls == dict.fromkeys(BLOCKS, 1)


@pytest.mark.parametrize("mode", list(MODES))
def test_checkpointing_recomputes_each_block_once_and_keeps_the_gradients(reference, mode):
    inputs, _, expected = reference
    kwargs, early_stop = MODES[mode]
    model, _ = build(kwargs)
    # Each kind of block (LLM layer, MAR encoder/decoder block, diffusion-head block): forward + one recompute.
    # The head used to wrap its self-checkpointing blocks in a second checkpoint: 3 runs in the last two modes.
    assert count_block_starts(model, inputs, early_stop) == dict.fromkeys(BLOCKS, 2)
    grads = gradients(model)
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], msg=lambda message, name=name: f"{name}: {message}")


def test_the_head_follows_the_per_block_switches(reference):
    """The head adds no checkpointing of its own: a head block that transformers leaves unchecked runs once."""
    inputs, _, expected = reference
    model, _ = build({"use_reentrant": False})
    for block in model.model.diffusion_head.res_blocks:
        block.gradient_checkpointing = False
    calls = count_block_starts(model, inputs, early_stop=False)
    assert calls == {**dict.fromkeys(BLOCKS, 2), "head_block": 1}
    torch.testing.assert_close(gradients(model), expected)


def test_the_benchmark_reports_every_mode(tmp_path):
    report = main(["--batch", "1", "--repeats", "1", "--json", str(tmp_path / "report.json")])
    assert (tmp_path / "report.json").is_file()
    assert [row["mode"] for row in report["modes"]] == ["off", "on", "on, reentrant", "on, no early stop"]
    off, *on = report["modes"]
    assert off["block_starts_per_step"] == dict.fromkeys(BLOCKS, 1)
    for row in on:
        assert row["block_starts_per_step"] == dict.fromkeys(BLOCKS, 2)
        assert row["max_grad_difference"] < 1e-5
        assert row["step_s"] > 0 and row["head_step_s"] > 0


@pytest.mark.parametrize("implementation, llm_sdpa_calls_per_layer", [("sdpa", 1), ("eager", 0)])
def test_attn_implementation_selects_the_llm_attention_and_the_mar_keeps_sdpa(
    tiny_model, tokenizer, monkeypatch, implementation, llm_sdpa_calls_per_layer
):
    """The LLM (Qwen2 through transformers) runs the selected attention; the MAR blocks call torch SDPA always."""
    config = copy.deepcopy(tiny_model.config)  # `_from_config` sets attn_implementation on the config it is given
    model = type(tiny_model)._from_config(config, attn_implementation=implementation).eval()
    assert model.model.language_model.config._attn_implementation == implementation
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs),
    )
    ids = torch.tensor([tokenizer("a red circle")["input_ids"]])
    latents = torch.zeros(1, *config.image_grid, config.token_dim)  # no VAE: its attention blocks use SDPA too
    with torch.no_grad():
        model.text_to_image_loss(
            ids, torch.ones_like(ids), latents=latents, generator=torch.Generator().manual_seed(0)
        )
    mar_blocks = config.encoder_num_layers + config.decoder_num_layers
    assert len(calls) == mar_blocks + llm_sdpa_calls_per_layer * config.text_config.num_hidden_layers
