"""The one settings object of image generation: where values come from, the names it accepts, errors that carry the
field as data, presets; and the sampler state that starts from known tokens."""

import dataclasses

import pytest
import torch

from modeling_harmon.modeling_harmon_sampler import SamplerState, masked_counts
from modeling_harmon.modeling_harmon_settings import (
    DEFAULT_IMAGE_GENERATION,
    HarmonImageGenerationSettings,
    HarmonSettingError,
    resolve_image_generation_settings,
)


def test_every_field_declares_its_help_and_the_names_map_once():
    for field in dataclasses.fields(HarmonImageGenerationSettings):
        assert field.metadata["help"], field.name
    assert HarmonImageGenerationSettings.aliases() == {"num_inference_steps": "num_iter"}
    assert HarmonImageGenerationSettings.flags()["num_iter"] == "--steps"
    assert HarmonImageGenerationSettings.flags()["num_sampling_steps"] == "--head-steps"
    assert set(DEFAULT_IMAGE_GENERATION) == set(HarmonImageGenerationSettings.names()) - {
        "strength",
        "image_guidance_scale",
    }


def test_values_come_from_defaults_then_stored_then_preset_then_given(tiny_model):
    config = tiny_model.config
    plain = resolve_image_generation_settings(config)
    assert (plain.num_iter, plain.guidance_scale, plain.height) == (64, 3.0, config.image_size)
    assert plain.num_sampling_steps == config.num_sampling_steps
    stored = {"num_iter": 8, "guidance_scale": 2.0}
    presets = {"fast": {"num_iter": 2, "num_sampling_steps": 5}}
    resolved = resolve_image_generation_settings(config, stored, presets, "fast", guidance_scale=1.5)
    assert (resolved.num_iter, resolved.num_sampling_steps, resolved.guidance_scale) == (2, 5, 1.5)
    assert resolve_image_generation_settings(config, stored, presets, "fast", num_inference_steps=3).num_iter == 3


@pytest.mark.parametrize(
    "given, field, argument, words",
    [
        ({"num_iter": 0}, "num_iter", "num_iter", "must be an integer in [1, 64]"),
        ({"num_inference_steps": 0}, "num_iter", "num_inference_steps", "must be an integer"),
        ({"num_iter": 2, "num_inference_steps": 2}, "num_iter", "num_iter", "given twice"),
        ({"guidance_scale": 0.5}, "guidance_scale", "guidance_scale", ">= 1"),
        ({"image_guidance_scale": float("nan")}, "image_guidance_scale", "image_guidance_scale", "finite"),
        ({"strength": -0.1}, "strength", "strength", "[0, 1]"),
        ({"height": 30}, "height", "height", "multiple of"),
        ({"temperature": True}, "temperature", "temperature", "finite number > 0"),
        ({"steps": 3}, "steps", "steps", "not an image-generation setting"),
    ],
)
def test_errors_carry_the_field_and_the_name_given(tiny_model, given, field, argument, words):
    with pytest.raises(HarmonSettingError) as caught:
        resolve_image_generation_settings(tiny_model.config, **given)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (
        (error.field, error.argument) == (field, argument) and str(error).startswith(argument) and words in str(error)
    )


def test_unknown_presets_and_stored_keys_are_refused(tiny_model):
    with pytest.raises(
        HarmonSettingError, match=r"sampling must be one of this model's sampling presets \['fast'\]"
    ) as caught:
        resolve_image_generation_settings(tiny_model.config, {}, {"fast": {}}, "slow")
    assert caught.value.field == "sampling"
    with pytest.raises(HarmonSettingError, match="not a setting"):
        resolve_image_generation_settings(tiny_model.config, {"num_steps": 3})


def test_the_model_and_generate_images_use_the_checkpoints_presets(tiny_model, tokenizer):
    previous = getattr(tiny_model.generation_config, "image_generation_presets", None)
    tiny_model.generation_config.image_generation_presets = {"tiny": {"num_iter": 2, "num_sampling_steps": 3}}
    try:
        assert tiny_model.image_generation_settings("tiny").num_iter == 2
        steps = []
        tiny_model.generate_images(
            "a red circle",
            tokenizer=tokenizer,
            sampling="tiny",
            guidance_scale=1.0,
            callback=lambda step, *_: steps.append(step),
        )
        assert steps == [0, 1]
        with pytest.raises(HarmonSettingError, match="applies to an init_image"):
            tiny_model.generate_images("a red circle", tokenizer=tokenizer, sampling="tiny", strength=0.5)
        assert tiny_model.sampling_presets() == {"tiny": {"num_iter": 2, "num_sampling_steps": 3}}
    finally:
        tiny_model.generation_config.image_generation_presets = previous


def test_preset_is_the_deprecated_name_of_sampling(tiny_model, tokenizer):
    """`preset=` still selects a sampling preset, with a FutureWarning, in the model, the diffusers pipeline and
    the settings call; given beside a different `sampling=` it is refused, naming both."""
    from harmon_pipelines import HarmonPipeline

    previous = getattr(tiny_model.generation_config, "image_generation_presets", None)
    tiny_model.generation_config.image_generation_presets = {"tiny": {"num_iter": 2, "num_sampling_steps": 3}}
    try:
        with pytest.warns(FutureWarning, match="preset= is renamed sampling="):
            assert tiny_model.image_generation_settings(preset="tiny").num_iter == 2
        pipe = HarmonPipeline(model=tiny_model, tokenizer=tokenizer)
        pipe.set_progress_bar_config(disable=True)
        steps = []

        def count(pipeline, step, timestep, kwargs):
            steps.append(step)
            return {}

        with pytest.warns(FutureWarning, match="preset= is renamed sampling="):
            pipe("a red circle", preset="tiny", guidance_scale=1.0, callback_on_step_end=count, output_type="latent")
        assert steps == [0, 1]
        with pytest.raises(HarmonSettingError, match="given twice, as sampling='tiny' and preset='other'"):
            with pytest.warns(FutureWarning):
                tiny_model.generate_images("x", tokenizer=tokenizer, sampling="tiny", preset="other")
    finally:
        tiny_model.generation_config.image_generation_presets = previous


def test_sampler_state_keeps_known_tokens_and_schedules_the_unknown_ones():
    orders = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)])
    plain = SamplerState.start(orders, 4, torch.float32)
    assert plain.mask.all() and plain.num_unknown == plain.num_masked == 16
    assert torch.equal(plain.ranks.gather(1, orders), torch.arange(16).expand(2, -1))  # the orders' own ranks
    known = torch.zeros(2, 16, dtype=torch.bool)
    known[:, :6] = True
    values = torch.randn(2, 16, 4)
    state = SamplerState.start(orders, 4, torch.float32, known_tokens=values, known_mask=known)
    assert state.num_unknown == 10 and torch.equal(state.mask, ~known)
    assert torch.equal(state.tokens[known], values[known]) and not state.tokens[~known].any()
    assert bool((state.ranks[~known] < 10).all()) and bool((state.ranks[known] >= 10).all())
    # The unknown tokens keep the relative order they have in the generation orders.
    for row in range(2):
        unknown_in_order = [int(position) for position in orders[row] if not known[row, position]]
        assert state.ranks[row, unknown_in_order].tolist() == list(range(10))
    assert masked_counts(10, 4)[-1] == 0 and len(masked_counts(10, 4)) == 4
    with pytest.raises(ValueError, match="same number of known tokens"):
        uneven = known.clone()
        uneven[0, 7] = True
        SamplerState.start(orders, 4, torch.float32, known_tokens=values, known_mask=uneven)


def test_the_demo_model_ships_a_fast_preset():
    from harmon_pipelines.default_model import load_default_model
    from harmon_training.shapes.export_default import demo_presets

    model, _ = load_default_model()
    assert model.generation_config.image_generation_presets == demo_presets(4)
    assert demo_presets(1) == {"fast": {"num_sampling_steps": 10}}  # a model that draws once: fewer head steps only
    fast, default = model.image_generation_settings("fast"), model.image_generation_settings()
    assert (fast.num_sampling_steps, default.num_sampling_steps) == (25, 50)
    assert (fast.candidates, default.candidates) == (2, 4)
    assert dataclasses.replace(fast, num_sampling_steps=50, candidates=4) == default  # the preset changes nothing else
