"""Shared tiny fixtures: a random Harmon with a 3-level, 4-channel VAE and a byte-level tokenizer."""

import os
import tempfile


os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No tuned CPU kernels from the developer's own cache (`harmon tune`): tests see the fixed defaults unless they say.
os.environ["HARMON_KERNEL_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="harmon-kernels-"), "linear_kernels.json")

import pytest  # noqa: E402
import torch  # noqa: E402

from modeling_harmon.demo import build_random_model  # noqa: E402


torch.set_num_threads(1)


def wake_zero_initialised(model, seed: int = 0):
    """Give the zero-initialised tensors (adaLN gates, head output) small random values.

    Freshly initialised, the diffusion head ignores its condition (its output layer is zero), so prompts and
    guidance could not change an image; tests of those effects need a head that listens.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() and torch.count_nonzero(parameter) == 0:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def small_shapes_config(tokenizer):
    """A HarmonConfig small enough to build in a test, around a Shapes-world tokenizer (`make_data.build_tokenizer`)."""
    from modeling_harmon import HarmonConfig

    return HarmonConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "tie_word_embeddings": True,
        },
        encoder_hidden_size=32,
        encoder_num_layers=1,
        encoder_num_heads=2,
        decoder_hidden_size=32,
        decoder_num_layers=1,
        decoder_num_heads=2,
        buffer_size=2,
        image_size=32,
        diffusion_head_depth=1,
        diffusion_head_width=32,
        image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of a small random Harmon in eval mode; tests must not modify it."""
    model, tokenizer = build_random_model(seed=0)
    return wake_zero_initialised(model), tokenizer


@pytest.fixture(scope="session")
def tiny_model(tiny):
    return tiny[0]


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture(scope="module")
def processor(tiny_model, tokenizer):
    """The tiny model's `HarmonProcessor`, one per test module (a module may change it)."""
    from modeling_harmon.processing_harmon import HarmonProcessor

    return HarmonProcessor.from_model_config(tiny_model.config, tokenizer)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model, tokenizer):
    """A folder holding the tiny model and its tokenizer (`save_pretrained`); tests must not modify it."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
