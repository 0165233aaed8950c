"""diffusers-style tests of `HarmonPipeline` and the transformers text-to-image pipeline (in process)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from harmon_pipelines import HarmonPipeline, HarmonTextToImagePipeline


STEPS = 3


def generators(*seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


@pytest.fixture(scope="module")
def pipe(tiny_model, tokenizer):
    pipeline = HarmonPipeline(model=tiny_model, tokenizer=tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipe, prompt="a red circle", **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, **kwargs).images


def test_components_and_shared_vae(pipe, tiny_model):
    assert set(pipe.components) == {"model", "tokenizer"}
    assert pipe.vae is tiny_model.model.vae
    assert pipe.vae_scale_factor == tiny_model.config.vae_stride
    assert pipe.model_cpu_offload_seq == "model"


def test_matches_model_generate_images(pipe, tiny_model, tokenizer):
    images = run(pipe, ["a red circle", "two blue squares"], generator=generators(1, 2), output_type="pt")
    expected = tiny_model.generate_images(
        ["a red circle", "two blue squares"], tokenizer=tokenizer, num_iter=STEPS, generator=generators(1, 2)
    ).images
    torch.testing.assert_close(images, (expected / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


def test_sampling_defaults_come_from_the_generation_config(pipe, tiny_model, tokenizer):
    """Unset sampling arguments take the checkpoint's `generation_config.image_generation` (as `generate_images`
    does), so a model trained with other settings samples with them; explicit arguments still win."""
    stored = {"num_iter": 2, "guidance_scale": 1.5, "temperature": 0.5, "x0_clamp": 0.5, "cfg_schedule": "linear"}
    previous = getattr(tiny_model.generation_config, "image_generation", None)
    tiny_model.generation_config.image_generation = stored
    try:
        images = pipe("a red circle", generator=generators(3), output_type="pt").images
        assert (pipe.num_timesteps, pipe.guidance_scale) == (2, 1.5)
        expected = tiny_model.generate_images("a red circle", tokenizer=tokenizer, generator=generators(3), **stored)
        torch.testing.assert_close(images, (expected.images / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)
        unclamped = pipe("a red circle", generator=generators(3), output_type="pt", x0_clamp=100.0).images
        assert (unclamped - images).abs().max() > 1e-3  # the stored clamp was applied, and an explicit one replaces it
        pipe("a red circle", num_inference_steps=3, guidance_scale=2.0, output_type="latent")
        assert (pipe.num_timesteps, pipe.guidance_scale) == (3, 2.0)
    finally:
        tiny_model.generation_config.image_generation = previous
    pipe("a red circle", output_type="latent")
    assert (pipe.num_timesteps, pipe.guidance_scale) == (64, 3.0)  # the released models' (reference) defaults


def test_deterministic_with_generator(pipe):
    first = run(pipe, generator=torch.Generator().manual_seed(0))
    again = run(pipe, generator=torch.Generator().manual_seed(0))
    other = run(pipe, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_expected_slice(pipe):
    """Regression values (fp32, CPU, one thread) of the tiny random model; a change means the sampler changed."""
    image = run(pipe, generator=torch.Generator().manual_seed(0))
    assert image.shape == (1, 32, 32, 3)
    flat = image.flatten()
    values = np.concatenate([flat[:8], flat[-8:]])
    expected = np.array(EXPECTED_SLICE, dtype=np.float32)
    np.testing.assert_allclose(values, expected, atol=1e-4)


EXPECTED_SLICE = [
    0.500212,
    0.501420,
    0.514024,
    0.518527,
    0.488407,
    0.539166,
    0.512257,
    0.513424,
    0.452184,
    0.495280,
    0.505334,
    0.464216,
    0.505264,
    0.497192,
    0.474988,
    0.509724,
]


def test_batch_equals_single_with_generator_list(pipe):
    prompts = ["a red circle", "two blue squares", "a yellow triangle"]
    batch = run(pipe, prompts, generator=generators(10, 11, 12), negative_prompt="green")
    for index, prompt in enumerate(prompts):
        alone = run(pipe, prompt, generator=generators(10 + index), negative_prompt="green")
        np.testing.assert_allclose(batch[index], alone[0], atol=1e-4)


def test_num_images_per_prompt(pipe):
    images = run(pipe, ["a red circle", "a blue square"], num_images_per_prompt=2, generator=generators(1, 2, 3, 4))
    assert images.shape == (4, 32, 32, 3)
    # image i of the batch depends only on generator i
    alone = run(pipe, "a blue square", generator=generators(3))
    np.testing.assert_allclose(images[2], alone[0], atol=1e-4)
    assert np.abs(images[2] - images[3]).max() > 1e-3


def test_output_types(pipe, tiny_model):
    pil = run(pipe, output_type="pil", generator=generators(5))
    array = run(pipe, output_type="np", generator=generators(5))
    tensor = run(pipe, output_type="pt", generator=generators(5))
    latents = run(pipe, output_type="latent", generator=generators(5))
    assert isinstance(pil, list) and isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)
    assert array.shape == (1, 32, 32, 3) and array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1
    assert tensor.shape == (1, 3, 32, 32)
    torch.testing.assert_close(tensor.permute(0, 2, 3, 1), torch.from_numpy(array))
    np.testing.assert_array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype(np.uint8))
    grid = 32 // tiny_model.config.vae_stride
    assert latents.shape == (1, tiny_model.config.vae_latent_channels, grid, grid)
    decoded = tiny_model.model.decode_latents(latents)
    torch.testing.assert_close((decoded / 2 + 0.5).clamp(0, 1), tensor, atol=1e-5, rtol=0)


def test_return_dict_false(pipe):
    output = pipe(
        "a red circle", num_inference_steps=STEPS, output_type="np", return_dict=False, generator=generators(0)
    )
    assert isinstance(output, tuple) and output[0].shape == (1, 32, 32, 3)


def test_callback_once_per_iteration_and_inputs(pipe, tiny_model):
    calls = []

    def callback(pipeline, step, timestep, callback_kwargs):
        calls.append((step, timestep, {name: value.clone() for name, value in callback_kwargs.items()}))
        return {}

    run(
        pipe,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "mask"],
        generator=generators(0),
    )
    assert [step for step, _, _ in calls] == list(range(STEPS))
    masked = [timestep for _, timestep, _ in calls]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0
    grid = 32 // tiny_model.config.vae_stride
    for _, timestep, tensors in calls:
        assert tensors["latents"].shape == (1, tiny_model.config.vae_latent_channels, grid, grid)
        assert int(tensors["mask"].sum()) == timestep


def test_callback_can_modify_latents(pipe, tiny_model):
    def zero_out(pipeline, step, timestep, callback_kwargs):
        if step == STEPS - 1:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return {}

    latents = run(pipe, output_type="latent", callback_on_step_end=zero_out, generator=generators(0))
    assert torch.count_nonzero(latents) == 0


def test_callback_can_interrupt(pipe):
    calls = []

    def stop(pipeline, step, timestep, callback_kwargs):
        calls.append(step)
        pipeline._interrupt = True
        return {}

    latents = run(
        pipe, output_type="latent", callback_on_step_end=stop, generator=generators(0), num_inference_steps=4
    )
    assert calls == [0]
    assert latents.shape[0] == 1


def test_check_inputs(pipe):
    bad = [
        (dict(prompt=None), "prompt"),
        (dict(prompt=["ok", 3]), "prompt"),
        (dict(negative_prompt=["a", "b", "c"], prompt=["x", "y"]), "negative_prompt"),
        (dict(height=30), "height"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(guidance_scale=0.5), "guidance_scale"),
        (dict(cfg_schedule="cosine"), "cfg_schedule"),
        (dict(temperature=0.0), "temperature"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(generator=generators(1, 2)), "generator"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(callback_on_step_end_tensor_inputs=["tokens"]), "callback_on_step_end_tensor_inputs"),
    ]
    for kwargs, name in bad:
        kwargs = {"prompt": "a red circle", "num_inference_steps": STEPS, **kwargs}
        with pytest.raises(ValueError, match=name):
            pipe(**kwargs)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_harmon", "HarmonPipeline"]
    assert index["model"] == ["modeling_harmon", "HarmonForConditionalGeneration"]
    assert "vae" not in index
    assert (tmp_path / "pipeline_harmon.py").is_file() and (tmp_path / "model" / "modeling_harmon.py").is_file()
    loaded = HarmonPipeline.from_pretrained(tmp_path)
    assert type(loaded) is HarmonPipeline and type(loaded.model) is type(pipe.model)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(loaded, generator=generators(3)), run(pipe, generator=generators(3)))
    with pytest.raises(TypeError, match="unexpected"):
        HarmonPipeline.from_pretrained(tmp_path, variant="fp16")
    half = HarmonPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16, model=None)
    assert half.model.dtype == torch.bfloat16


def test_transformers_text_to_image_pipeline_in_process(tiny_model, tokenizer):
    from transformers import pipeline

    generator = pipeline(
        "text-to-image", model=tiny_model, tokenizer=tokenizer, pipeline_class=HarmonTextToImagePipeline
    )
    images = generator("a red circle", num_iter=STEPS, num_images_per_prompt=2, generator=generators(1, 2))
    assert len(images) == 2 and all(isinstance(image, Image.Image) and image.size == (32, 32) for image in images)
    expected = tiny_model.generate_images(
        "a red circle", tokenizer=tokenizer, num_iter=STEPS, num_images_per_prompt=2, generator=generators(1, 2)
    ).images
    pixels = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(images[1]), pixels[1])
    batch = generator(["a red circle", "a blue square"], num_iter=STEPS)
    assert len(batch) == 2 and len(batch[0]) == 1
    # diffusers' names work here too, and give the same pixels as the model's own.
    by_diffusers_name = generator("a red circle", num_inference_steps=STEPS, generator=generators(1, 2)[:1])
    by_model_name = generator("a red circle", num_iter=STEPS, generator=generators(1, 2)[:1])
    np.testing.assert_array_equal(np.asarray(by_diffusers_name[0]), np.asarray(by_model_name[0]))
    with pytest.raises(ValueError, match="num_iter was given twice"):
        generator("a red circle", num_inference_steps=3, num_iter=3)
    with pytest.raises(ValueError, match="Unknown text-to-image argument.*'steps'"):
        generator("a red circle", steps=3)


def test_the_old_pipeline_name_still_works_with_a_warning(tiny_model, tokenizer):
    from harmon_pipelines import HarmonPipeline, HarmonText2ImagePipeline

    with pytest.warns(FutureWarning, match="use HarmonPipeline"):
        old = HarmonText2ImagePipeline(model=tiny_model, tokenizer=tokenizer)
    assert isinstance(old, HarmonPipeline)
