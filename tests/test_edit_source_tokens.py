"""`config.edit_source_tokens`: an edit's source tokens reach the MAR decoder position by position (issue 25).

The projection starts at zero, so switching it on for a trained model changes nothing; once trained it changes the
edit rows and only those (text-to-image and the guidance row without images never see a source); training reaches
it through `generation_condition`; a source of another size is refused by name; and it saves and loads."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_harmon import HarmonConfig, HarmonForConditionalGeneration


FAST = {"num_sampling_steps": 2, "num_iter": 2, "guidance_scale": 2.0, "image_guidance_scale": 1.5}


def _picture(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8))


def _seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _with_source_path(model) -> HarmonForConditionalGeneration:
    """`model` with `edit_source_tokens` on: the same weights plus the new projection (zero)."""
    config = HarmonConfig.from_dict({**model.config.to_dict(), "edit_source_tokens": True})
    grown = HarmonForConditionalGeneration(config)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert set(missing) <= {"model.edit_source_proj.bias", "model.edit_source_proj.weight"} and not unexpected
    return grown.eval()


@pytest.fixture(scope="module")
def source_model(tiny_model):
    return _with_source_path(tiny_model)


def test_the_projection_starts_at_zero_and_changes_nothing(tiny_model, source_model, tokenizer):
    assert "model.edit_source_proj.weight" not in tiny_model.state_dict()
    projection = source_model.model.edit_source_proj
    assert not projection.weight.any() and not projection.bias.any()
    assert tiny_model.model.edit_source_proj is None  # the reference's layout without the flag
    plain = tiny_model.generate_images(
        "make it blue", context_images=_picture(1), tokenizer=tokenizer, generator=_seed(), **FAST
    )
    sourced = source_model.generate_images(
        "make it blue", context_images=_picture(1), tokenizer=tokenizer, generator=_seed(), **FAST
    )
    assert torch.equal(plain.latents, sourced.latents)


def test_a_trained_projection_changes_edits_only_and_not_the_neither_rows(source_model, tokenizer, monkeypatch):
    model = _with_source_path(source_model)
    torch.nn.init.normal_(model.model.edit_source_proj.weight, std=0.5)
    text = {"tokenizer": tokenizer, "num_sampling_steps": 2, "num_iter": 2, "guidance_scale": 2.0}
    t2i_before = source_model.generate_images("a red circle", generator=_seed(), **text)
    t2i_after = model.generate_images("a red circle", generator=_seed(), **text)
    assert torch.equal(t2i_before.latents, t2i_after.latents)

    seen = []
    decoder_forward = type(model.model.mar_decoder).forward

    def spy(self, *args, source_embeds=None, **kwargs):
        seen.append(source_embeds)
        return decoder_forward(self, *args, source_embeds=source_embeds, **kwargs)

    monkeypatch.setattr(type(model.model.mar_decoder), "forward", spy)
    edited = model.generate_images(
        "make it blue", context_images=_picture(1), tokenizer=tokenizer, generator=_seed(), **FAST
    )
    plain = source_model.generate_images(
        "make it blue", context_images=_picture(1), tokenizer=tokenizer, generator=_seed(), **FAST
    )
    assert not torch.allclose(edited.latents, plain.latents)
    sources = seen[0]  # three row groups of one image: text and image; image only; neither
    assert sources.shape[0] == 3
    assert torch.equal(sources[0], sources[1]) and sources[0].abs().sum() > 0 and not sources[2].any()


def test_training_reaches_the_projection_and_rows_without_a_source_get_none(source_model, tokenizer):
    model = _with_source_path(source_model)
    model.train()
    processor = model._prompt_processor(tokenizer)
    texts = [processor.format_text_to_image_prompt("make it blue", num_images=1), "Generate an image: a circle"]
    batch = processor(text=texts, images=[_picture(1)], return_tensors="pt", padding=True)
    pixels = processor.image_processor([_picture(2), _picture(3)], return_tensors="pt")["pixel_values"]
    latents = model.model.encode_images(pixels)
    length = latents.shape[1] * latents.shape[2]
    mask = torch.stack([torch.arange(length) % 2 == 0, torch.arange(length) % 2 == 1])
    embeds = model.model.edit_source_embeds(batch["input_ids"], batch["pixel_values"], latents.shape[1:3])
    assert embeds.shape[:2] == (2, length) and not embeds[1].any()
    condition, _ = model.generation_condition(
        batch["input_ids"], batch["attention_mask"], latents, mask, context_pixel_values=batch["pixel_values"]
    )
    condition[mask].pow(2).mean().backward()
    assert model.model.edit_source_proj.weight.grad.abs().sum() > 0


def test_a_source_of_another_size_is_refused_by_name(source_model):
    pixels = torch.zeros(1, 3, 48, 48)
    with pytest.raises(ValueError, match="edit_source_tokens .* target's token grid"):
        source_model.model.project_edit_sources(pixels, (8, 8))


def test_the_flag_saves_and_loads(source_model, tmp_path):
    model = _with_source_path(source_model)
    torch.nn.init.normal_(model.model.edit_source_proj.weight)
    model.save_pretrained(tmp_path)
    loaded = HarmonForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.edit_source_tokens is True
    assert torch.equal(loaded.model.edit_source_proj.weight, model.model.edit_source_proj.weight)
    with pytest.raises(ValueError, match="edit_source_tokens must be True or False"):
        HarmonConfig(edit_source_tokens="yes")


def test_a_checkpoint_without_the_projection_loads_with_it_at_zero(tiny_model, tmp_path):
    """What a training stage does with `model.config: {edit_source_tokens: true}`: every trained weight is kept,
    the new projection starts at zero (not at the decoder's random initialisation)."""
    tiny_model.save_pretrained(tmp_path)
    config = HarmonConfig.from_pretrained(tmp_path)
    config.edit_source_tokens = True
    loaded = HarmonForConditionalGeneration.from_pretrained(tmp_path, config=config)
    assert not loaded.model.edit_source_proj.weight.any() and not loaded.model.edit_source_proj.bias.any()
    before = tiny_model.state_dict()
    for name, value in loaded.state_dict().items():
        if not name.startswith("model.edit_source_proj."):
            assert torch.equal(value, before[name]), name
