"""Instruction editing at the model level (issue 24): context images in the generation prompt through the
understanding path, the two guidance scales and their row groups, multi-turn by feeding a result back, and refusals."""

import numpy as np
import pytest
import torch
from PIL import Image


FAST = {"num_sampling_steps": 2, "num_iter": 2}


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _picture(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8))


def test_two_guidance_scales_combine_as_instructpix2pix_and_reduce_to_the_conditional_estimate():
    from modeling_harmon.modeling_harmon_diffusion import HarmonGaussianDiffusion

    torch.manual_seed(0)
    head = torch.nn.Linear(6, 8)  # stands in for the head: output = eps (4) and variance values (4)

    def fake_head(inputs, timesteps, conditions):
        return head(torch.cat([inputs, conditions], dim=1))

    x, t = torch.randn(3, 4), torch.zeros(3)
    full, image_only, neither = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)
    eps = {name: fake_head(x, t, c)[:, :4] for name, c in (("c", full), ("i", image_only), ("n", neither))}
    guided, _ = HarmonGaussianDiffusion.predict(fake_head, x, t, full, (image_only, neither), (2.0, 1.5))
    expected = eps["n"] + 1.5 * (eps["i"] - eps["n"]) + 2.0 * (eps["c"] - eps["i"])
    assert torch.allclose(guided, expected, atol=1e-6)
    plain, _ = HarmonGaussianDiffusion.predict(fake_head, x, t, full)
    neutral, _ = HarmonGaussianDiffusion.predict(fake_head, x, t, full, (image_only, neither), (1.0, 1.0))
    assert torch.allclose(neutral, plain, atol=1e-6)


@pytest.mark.parametrize("scales, groups", [((1.0, 1.0), 1), ((2.0, 1.0), 2), ((2.0, 1.5), 3), ((1.0, 1.5), 3)])
def test_context_images_fill_the_placeholders_of_each_row_group(tiny_model, tokenizer, scales, groups):
    settings = tiny_model.image_generation_settings(guidance_scale=scales[0], image_guidance_scale=scales[1])
    first, second = _picture(1), _picture(2)
    batch = tiny_model._context_prompt_batch(
        ["make the circle blue", "remove the square"],
        None,
        None,
        [[first], [first, second]],
        settings,
        2,
        tokenizer,
        None,
    )
    assert batch.groups == groups and batch.num_images == 4 and batch.input_ids.shape[0] == 4 * groups
    image_id = tiny_model.config.image_token_id
    per_row = (batch.input_ids == image_id).sum(1).tolist()
    per_image = per_row[0]
    assert per_row[:4] == [per_image, per_image, 2 * per_image, 2 * per_image]  # prompt-major, per image
    if groups >= 2:
        assert per_row[4:8] == per_row[:4]  # images only: the same images, the unconditional text
    if groups == 3:
        assert per_row[8:] == [0, 0, 0, 0]  # neither
    processor = tiny_model._prompt_processor(tokenizer)
    pixels = processor.image_processor([first], return_tensors="pt")["pixel_values"]
    features = tiny_model.model.get_image_features(pixels.to(tiny_model.dtype))[0]
    placed = batch.inputs_embeds[0][batch.input_ids[0] == image_id]
    assert torch.allclose(placed, features.to(placed.dtype), atol=1e-6)
    text = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    assert "make the circle blue" in text


def test_the_context_image_changes_what_is_drawn_and_a_turn_feeds_the_result_back(tiny_model, tokenizer):
    common = {"tokenizer": tokenizer, "guidance_scale": 2.0, "image_guidance_scale": 1.5, **FAST}
    one = tiny_model.generate_images("make it blue", context_images=_picture(1), generator=_seed(), **common)
    again = tiny_model.generate_images("make it blue", context_images=_picture(1), generator=_seed(), **common)
    other = tiny_model.generate_images("make it blue", context_images=_picture(2), generator=_seed(), **common)
    assert torch.equal(one.latents, again.latents)
    assert not torch.allclose(one.latents, other.latents)
    # Turn two: the first result is the picture the next instruction is about.
    result = Image.fromarray(((one.images[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).byte().numpy())
    turn = tiny_model.generate_images("now remove it", context_images=[result], generator=_seed(), **common)
    assert turn.latents.shape == one.latents.shape and torch.isfinite(turn.latents).all()


def test_an_edit_inside_a_mask_keeps_the_unmasked_tokens(tiny_model, tokenizer):
    source = _picture(3)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, :16] = 255
    output = tiny_model.generate_images(
        "make it blue",
        context_images=source,
        init_image=source,
        mask_image=Image.fromarray(mask),
        tokenizer=tokenizer,
        generator=_seed(),
        **FAST,
    )
    from modeling_harmon.modeling_harmon_canvas import init_pixels

    known = tiny_model.model.encode_images(init_pixels(source))
    drawn = tiny_model.model.latents_to_tokens(output.latents)
    assert torch.allclose(drawn[:, :, 4:], known[:, :, 4:].to(drawn.dtype), atol=1e-6)


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({"context_images": []}, "context_images must be a PIL image"),
        ({"context_images": [[]]}, "every prompt needs at least one image to edit"),
        ({"context_images": [["x"]]}, "context_images must be a PIL image"),
        ({"context_images": [[_picture(1)], [_picture(2)]]}, "holds 2 lists but there are 1 prompts"),
        ({"context_images": None, "image_guidance_scale": 1.5}, "applies to context_images"),
        ({"context_images": _picture(1), "prompt": None, "input_ids": torch.tensor([[1, 2]])}, "not input_ids"),
        (
            {"context_images": Image.fromarray(np.full((32, 32), np.inf, dtype=np.float32))},
            "context_images",
        ),
        ({"context_images": "TOO MANY"}, "more than the language model's max_position_embeddings"),
    ],
)
def test_bad_context_images_are_refused_naming_the_argument(tiny_model, tokenizer, arguments, words):
    arguments = {"prompt": "make it blue", **arguments}
    if arguments["context_images"] == "TOO MANY":  # one image more than the LLM's positions hold
        per_image = tiny_model._prompt_processor(tokenizer).image_processor.num_image_placeholders(32, 32)
        limit = tiny_model.config.text_config.max_position_embeddings
        arguments["context_images"] = [_picture(1)] * (limit // per_image + 1)
    with pytest.raises(ValueError) as caught:
        tiny_model.generate_images(tokenizer=tokenizer, generator=_seed(), **arguments, **FAST)
    assert words in str(caught.value)
