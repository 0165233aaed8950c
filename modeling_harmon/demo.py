"""A tiny, RANDOMLY INITIALISED Harmon built in code: byte tokenizer, small config, model, and a plain VQA helper.

The whole path (tokenizer -> LLM -> MAR -> diffusion head -> VAE, and back for understanding) runs offline in
seconds on it, so tests use it and the `harmon` CLI falls back to it when no trained model is embedded. The weights
are random: images are noise and answers gibberish.
"""

import torch

from .configuration_harmon import HarmonConfig
from .modeling_harmon import HarmonForConditionalGeneration


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) plus the Qwen chat specials and `<image>`.

    Built in code with the `tokenizers` library so that the demo and the tests need no download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    core = Tokenizer(models.BPE(vocab={symbol: index for index, symbol in enumerate(sorted(alphabet))}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS + ["<image>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_token_id = tokenizer.image_token_id
    return tokenizer, image_token_id


def tiny_config(
    vocab_size: int, image_token_id: int, pad_token_id: int, eos_token_id: int, **overrides
) -> HarmonConfig:
    """A small Harmon with a 3-level, 4-channel VAE (stride 4) and 32 px images: seconds on a CPU."""
    settings = dict(
        text_config=dict(
            model_type="qwen2",
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            bos_token_id=None,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        ),
        vae_config=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D"] * 3,
            block_out_channels=[16, 32, 32],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
            scaling_factor=1.0,
        ),
        encoder_hidden_size=64,
        encoder_num_layers=2,
        encoder_num_heads=4,
        decoder_hidden_size=48,
        decoder_num_layers=2,
        decoder_num_heads=4,
        buffer_size=4,
        image_size=32,
        diffusion_head_depth=2,
        diffusion_head_width=64,
        num_sampling_steps=10,
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    settings.update(overrides)
    return HarmonConfig(**settings)


def build_random_model(seed: int = 0):
    """(model, tokenizer): a randomly initialised tiny Harmon and its byte tokenizer."""
    tokenizer, image_token_id = build_byte_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(
        vocab_size=len(tokenizer) - 1,  # like the reference, `<image>` has no embedding row
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return HarmonForConditionalGeneration(config).eval(), tokenizer


def answer(model, tokenizer, image: torch.Tensor, question: str, max_new_tokens: int = 16) -> str:
    """Greedy answer to `question` about `image` (3, H, W) in [-1, 1], using the reference's prompt format."""
    placeholders = "<image>" * model.config.num_image_placeholders(image.shape[-2], image.shape[-1])
    text = model.config.prompt_template.format(input=f"{placeholders}\n{question}")
    input_ids = torch.tensor([tokenizer(text)["input_ids"]])
    output = model.generate(
        input_ids=input_ids,
        pixel_values=image[None],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
