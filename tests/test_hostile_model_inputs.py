"""Hostile or broken inputs to the model, the image processor and the text-to-image pipeline: each is refused with a
ValueError whose message names the argument (or, for remote code, never runs), instead of crashing deep inside torch,
running code nobody agreed to, or returning a silently black image."""

import copy
import json
import re
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

import modeling_harmon.modeling_harmon as modeling
from modeling_harmon import HarmonImageProcessor
from modeling_harmon.image_processing_harmon import to_rgb_image
from modeling_harmon.pipeline_harmon import HarmonPipeline


# 8 x 8 pixels are 2 x 2 tokens of the tiny model: every generation below takes milliseconds.
FAST = dict(num_iter=1, num_sampling_steps=2, guidance_scale=1.0, height=8, width=8)


def _starts_with(name: str) -> str:
    return rf"^{re.escape(name)}\b"


# ------------------------------------------------------------------------------------------ 1. remote code
EVIL_MODULE = """from pathlib import Path
Path({sentinel!r}).write_text("the folder's code ran")
from transformers import PreTrainedTokenizerFast
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _plant_evil_tokenizer(folder, evil_class: bool):
    """Point the folder's tokenizer at an `evil_tokenizer.py` (auto_map) whose import writes a sentinel file."""
    sentinel = folder / "SENTINEL"
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    if evil_class:  # no stock class to fall back on: only the folder's code could load it
        config["tokenizer_class"] = "EvilTokenizer"
    config_path.write_text(json.dumps(config))
    (folder / "evil_tokenizer.py").write_text(EVIL_MODULE.format(sentinel=str(sentinel)))
    return sentinel


@pytest.mark.parametrize(
    "evil_class, error",
    [
        (
            False,
            None,
        ),  # stock tokenizer_class next to the auto_map: the stock class loads, the module is never imported
        (
            True,
            r"(?s)^tokenizer could not be loaded from .* without remote code .*; load it yourself and pass tokenizer=",
        ),
    ],
    ids=["auto_map-beside-stock-class", "auto_map-only"],
)
def test_generate_images_never_runs_the_tokenizer_folder_code(tiny_dir, tmp_path, evil_class, error):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    sentinel = _plant_evil_tokenizer(folder, evil_class)
    with mock.patch("builtins.input", return_value="y") as asked:  # a prompt answered "y" would run the code
        model = AutoModel.from_pretrained(folder).eval()
        if error is None:
            output = model.generate_images("a red circle", **FAST)
            assert output.images.shape == (1, 3, 8, 8)
            assert type(model._harmon_tokenizer).__name__ != "EvilTokenizer"
        else:
            with pytest.raises(ValueError, match=error):
                model.generate_images("a red circle", **FAST)
    assert not asked.called
    assert not sentinel.exists()


def test_pipeline_from_pretrained_never_runs_the_tokenizer_folder_code(tiny_model, tokenizer, tmp_path):
    HarmonPipeline(model=tiny_model, tokenizer=tokenizer).save_pretrained(tmp_path)
    sentinel = _plant_evil_tokenizer(tmp_path / "tokenizer", evil_class=True)
    shutil.copyfile(
        tmp_path / "tokenizer" / "evil_tokenizer.py", tmp_path / "evil_tokenizer.py"
    )  # where it is looked up
    # trust_remote_code defaults to False, not None (with which transformers asks on the terminal, and a "y" runs
    # the folder's code): transformers refuses without asking.
    with mock.patch("builtins.input", return_value="y") as asked:
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            HarmonPipeline.from_pretrained(tmp_path, model=tiny_model)
    assert not asked.called
    with pytest.raises(TypeError, match=_starts_with("trust_remote_code")):
        HarmonPipeline.from_pretrained(tmp_path, model=tiny_model, trust_remote_code="yes")
    assert not sentinel.exists()


# ------------------------------------------------------------------------------------- 2. non-finite results
def _nan_in(module_path: str):
    def corrupt(model):
        with torch.no_grad():
            model.get_parameter(module_path).view(-1)[0] = float("nan")

    return corrupt


@pytest.mark.parametrize(
    "corrupt, kwargs, where",
    [
        (None, dict(temperature=1e30), "latents"),
        (_nan_in("model.diffusion_head.final_layer.linear.weight"), {}, "latents"),
        (_nan_in("model.vae.decoder.conv_out.weight"), {}, "images"),
    ],
    ids=["temperature-1e30", "nan-in-diffusion-head", "nan-in-vae-decoder"],
)
def test_non_finite_results_are_an_error(tiny_model, tokenizer, corrupt, kwargs, where):
    model = tiny_model
    if corrupt is not None:
        model = copy.deepcopy(tiny_model)  # the session model stays intact
        corrupt(model)
    message = rf"^generate_images produced non-finite \(NaN/inf\) values in the {where}\. Likely causes: corrupted"
    with pytest.raises(ValueError, match=message):
        model.generate_images("a red circle", tokenizer=tokenizer, **{**FAST, **kwargs})


# ----------------------------------------------------------------------------------- 3. NaN / out-of-range pixels
def _grey(value, dtype=np.float32):
    return np.full((8, 8, 3), value, dtype=dtype)


@pytest.mark.parametrize(
    "image, message",
    [
        (_grey(np.nan), r"^images\[0\] contains NaN or infinite values"),
        (_grey(np.inf), r"^images\[0\] contains NaN or infinite values"),
        (torch.full((3, 8, 8), -float("inf")), r"^images\[0\] contains NaN or infinite values"),
        (_grey(255.0), r"^images\[0\] holds floats in \[255, 255\], but float images must lie in \[0, 1\]"),
        (torch.full((3, 8, 8), -0.5), r"^images\[0\] holds floats in \[-0.5, -0.5\]"),
        (_grey(1.001, np.float64), r"^images\[0\] holds floats in \[1.001, 1.001\]"),
    ],
    ids=["np-nan", "np-inf", "pt-minus-inf", "float-0-255", "float-minus-1-1", "just-above-1"],
)
def test_image_processor_refuses_non_finite_or_out_of_range_floats(image, message):
    with pytest.raises(ValueError, match=message):
        HarmonImageProcessor(size=8, vae_stride=4)(image)


@pytest.mark.parametrize(
    "fill, message",
    [
        (float("nan"), r"^pixel_values contain non-finite \(NaN/inf\) values"),
        (float("inf"), r"^pixel_values contain non-finite \(NaN/inf\) values"),
        (2.0, r"^pixel_values hold values in \[-1, 2\], but must lie in \[-1, 1\]"),
        (-1.01, r"^pixel_values hold values in \[-1.01, 0.5\], but must lie in \[-1, 1\]"),
        (255.0, r"^pixel_values hold values in \[-1, 255\]"),
        (1.0005, None),  # within the rounding tolerance
    ],
)
@pytest.mark.parametrize("entry", ["get_image_features", "forward"])
def test_model_refuses_non_finite_or_out_of_range_pixel_values(tiny_model, tokenizer, entry, fill, message):
    pixels = torch.full((1, 3, 32, 32), 0.5)
    pixels[0, 0, 0, 0] = -1.0
    pixels[0, 1, 2, 3] = fill
    if entry == "forward":
        text = "<image>" * tiny_model.config.num_image_placeholders(32, 32) + "what?"
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        call = lambda: tiny_model(input_ids=ids, pixel_values=pixels)  # noqa: E731
    else:
        call = lambda: tiny_model.get_image_features(pixels)  # noqa: E731
    if message is None:
        call()
    else:
        with pytest.raises(ValueError, match=message):
            call()


# ----------------------------------------------------------------------------------------- 4. 16-bit images
@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("I;16", (4, 4), 32768), 128),  # 16-bit: x / 257, not clipped to 255
        (Image.new("I;16B", (4, 4), 65535), 255),
        (Image.new("I;16", (4, 4), 200), 200),  # PIL's 8 -> 16 bit conversion keeps 0..255 values
        (Image.new("I", (4, 4), 1000), 4),  # above 255: the 16-bit range
        (Image.new("I", (4, 4), 77), 77),
        (Image.new("F", (4, 4), 0.5), 128),  # max <= 1: the [0, 1] range
        (Image.new("F", (4, 4), 100.0), 100),  # otherwise [0, 255]
        (Image.new("L", (4, 4), 90), 90),
        (Image.new("LA", (4, 4), (90, 0)), 90),  # alpha is dropped, as the reference's convert("RGB") does
        (Image.new("RGBA", (4, 4), (90, 90, 90, 0)), 90),
        (Image.new("1", (4, 4), 1), 255),
    ],
    ids=["I;16-half", "I;16B-full", "I;16-8bit", "I-16bit", "I-8bit", "F-unit", "F-255", "L", "LA", "RGBA", "1"],
)
def test_to_rgb_image_scales_high_bit_depths(image, expected):
    rgb = to_rgb_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert np.array_equal(np.asarray(rgb), np.full((4, 4, 3), expected, dtype=np.uint8))


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.new("F", (4, 4), float("nan")), r"^image \(a PIL image of mode F\) contains NaN or infinite values"),
        (Image.new("F", (4, 4), -1.0), r"^image \(a PIL image of mode F\) holds values in \[-1, -1\]"),
        (Image.new("F", (4, 4), 300.0), r"^image \(a PIL image of mode F\) holds values in \[300, 300\]"),
        (Image.new("I", (4, 4), -5), r"^image \(a PIL image of mode I\) holds integers in \[-5, -5\]"),
        (Image.new("I", (4, 4), 70000), r"^image \(a PIL image of mode I\) holds integers in \[70000, 70000\]"),
        (np.zeros((4, 4, 3), dtype=np.uint8), r"^image must be a PIL image, got ndarray"),
    ],
    ids=["F-nan", "F-negative", "F-above-255", "I-negative", "I-above-16bit", "not-pil"],
)
def test_to_rgb_image_refuses_impossible_ranges(image, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_image(image)


@pytest.mark.parametrize("source", ["pil", "file"])
def test_image_processor_scales_a_16_bit_png(tmp_path, source):
    path = tmp_path / "grey16.png"
    Image.new("I;16", (8, 8), 32768).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
        image = opened.copy() if source == "pil" else str(path)
    processor = HarmonImageProcessor(size=8, vae_stride=4)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    # 32768 / 257 = 127.5 -> 128: mid grey, where PIL's convert("RGB") would have clipped it to white.
    assert torch.equal(pixels, processor(Image.new("L", (8, 8), 128), return_tensors="pt")["pixel_values"])
    with pytest.raises(ValueError, match=r"^images\[0\] \(a PIL image of mode F\) holds values in \[-2, -2\]"):
        processor(Image.new("F", (8, 8), -2.0))


# ---------------------------------------------------------------------------------- 5. prompt and size limits
@pytest.fixture(scope="module")
def short_model(tiny_model):
    """The tiny model with a 128-position LLM: 32 x 32 pixels (64 tokens + 4 buffers) leave 60 for the prompt."""
    model = copy.deepcopy(tiny_model)
    model.config.text_config.max_position_embeddings = 128
    return model


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=100_000, width=100_000), r"^height and width \(100000 x 100000\) give 625000000 image tokens"),
        (dict(height=4096, width=4096), r"^height and width \(4096 x 4096\) give 1048576 image tokens"),
    ],
)
def test_sizes_beyond_the_llm_positions_are_refused_before_any_allocation(tiny_model, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.resolve_image_generation_settings(**kwargs)
    with pytest.raises(ValueError, match=message):
        tiny_model.generate_images("a red circle", tokenizer=tokenizer, **{**FAST, **kwargs})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=48, width=48), r"^height and width \(48 x 48\) give 144 image tokens, which with 4 buffers"),
        (dict(prompt="x" * 100), r"^prompt is 1\d\d tokens long; with the 64 image tokens of 32 x 32 pixels"),
        (dict(prompt="a", negative_prompt="x" * 100, guidance_scale=2.0), r"^negative_prompt is 1\d\d tokens long"),
        (dict(prompt=None, input_ids=torch.zeros(1, 61, dtype=torch.long)), r"^input_ids is 61 tokens long"),
        (dict(prompt=None, input_ids=torch.zeros(1, 60, dtype=torch.long)), None),  # exactly 128 positions
        (dict(prompt="a red circle"), None),
    ],
    ids=["size", "prompt", "negative_prompt", "input_ids", "input_ids-just-fits", "fits"],
)
def test_prompt_and_image_must_fit_the_llm_positions(short_model, tokenizer, kwargs, message):
    kwargs = {**FAST, "height": 32, "width": 32, "prompt": "a red circle", **kwargs}
    if message is None:
        assert short_model.generate_images(tokenizer=tokenizer, **kwargs).images.shape == (1, 3, 32, 32)
    else:
        with pytest.raises(ValueError, match=message):
            short_model.generate_images(tokenizer=tokenizer, **kwargs)


@pytest.mark.parametrize("length, warned", [(128, False), (129, True)])
def test_understanding_past_the_llm_positions_warns_once(short_model, length, warned):
    short_model.model._warned_positions = False
    ids = torch.zeros(1, length, dtype=torch.long)
    with mock.patch.object(modeling.logger, "warning") as warning:
        short_model(input_ids=ids)
        short_model(input_ids=ids)
    assert warning.call_count == int(warned)
    if warned:
        assert f"{length} tokens long" in warning.call_args[0][0]
        assert "max_position_embeddings (128)" in warning.call_args[0][0]


# ------------------------------------------------------------------------------------------- 6. clear messages
def _ids(*values, dtype=torch.long):
    return torch.tensor([list(values)], dtype=dtype)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=42), r"^prompt must be a string or a list of strings, got int\.$"),
        (dict(prompt={"a": 1}), r"^prompt must be a string or a list of strings, got dict\.$"),
        (dict(negative_prompt=7, guidance_scale=2.0), r"^negative_prompt must hold strings, got int"),
        (dict(generator=42), r"^generator must be a torch.Generator or a list of them \(one per image\), got int\.$"),
        (dict(generator=[42]), r"^generator must be a torch.Generator .*, got list holding int\.$"),
        (dict(prompt=None, input_ids=_ids(1, 10_000)), r"^input_ids must hold token ids in \[0, 258\] .*10000"),
        (dict(prompt=None, input_ids=_ids(-1, 3)), r"^input_ids must hold token ids in \[0, 258\] .*-1"),
        (dict(prompt=None, input_ids=_ids(1.0, 2.0, dtype=torch.float32)), r"^input_ids must be an integer tensor"),
        (dict(prompt=None, input_ids=[[1, 2]]), r"^input_ids must be an integer tensor .*got list"),
        (
            dict(prompt=None, input_ids=_ids(1, 2), negative_input_ids=_ids(999), guidance_scale=2.0),
            r"^negative_input_ids must hold token ids",
        ),
    ],
)
def test_generate_images_names_the_bad_argument(tiny_model, tokenizer, kwargs, message):
    kwargs = {**FAST, "prompt": "a red circle", **kwargs}
    with pytest.raises(ValueError, match=message):
        tiny_model.generate_images(tokenizer=tokenizer, **kwargs)


@pytest.mark.parametrize(
    "input_ids, message",
    [
        (
            _ids(5, 259 + 1),
            r"^input_ids must hold token ids in \[0, 258\] \(or the <image> id 259\), got ids from 260",
        ),
        (_ids(-3, 5), r"^input_ids must hold token ids in \[0, 258\]"),
        (
            _ids(5.0, 6.0, dtype=torch.float32),
            r"^input_ids must be an integer tensor \(int64 or int32\).*torch.float32",
        ),
        (_ids(5, 6, dtype=torch.int32), None),
    ],
)
def test_forward_names_the_bad_input_ids(tiny_model, input_ids, message):
    if message is None:
        assert tiny_model(input_ids=input_ids).logits.shape[:2] == (1, 2)
    else:
        with pytest.raises(ValueError, match=message):
            tiny_model(input_ids=input_ids)


@pytest.mark.parametrize("prompt", ["", ["", "a red circle"]])
def test_empty_prompts_still_work(tiny_model, tokenizer, prompt):
    output = tiny_model.generate_images(prompt, tokenizer=tokenizer, **FAST)
    assert output.images.shape == (1 if isinstance(prompt, str) else 2, 3, 8, 8)
    assert bool(torch.isfinite(output.images).all())


# ---------------------------------------------------------------------------------------- 7. booleans as numbers
@pytest.mark.parametrize(
    "name", ["height", "width", "num_iter", "num_sampling_steps", "guidance_scale", "temperature", "x0_clamp"]
)
@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_numbers(tiny_model, tokenizer, name, value):
    with pytest.raises(ValueError, match=_starts_with(name)):
        tiny_model.resolve_image_generation_settings(**{name: value})
    with pytest.raises(ValueError, match=_starts_with(name)):
        tiny_model.generate_images("a red circle", tokenizer=tokenizer, **{**FAST, name: value})


@pytest.mark.parametrize("value", [True, False, 0, 1.0])
def test_num_images_per_prompt_must_be_a_positive_int(tiny_model, tokenizer, value):
    with pytest.raises(ValueError, match=r"^num_images_per_prompt must be an integer >= 1"):
        tiny_model.generate_images("a red circle", tokenizer=tokenizer, num_images_per_prompt=value, **FAST)
    pipe = HarmonPipeline(model=tiny_model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"^num_images_per_prompt must be an integer >= 1"):
        pipe("a red circle", num_images_per_prompt=value, num_inference_steps=1, height=8, width=8)
