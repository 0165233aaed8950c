"""Image-conditioned generation on the inputs users actually have (issue 21, "bad input"): grayscale, alpha, 16-bit
and palette pictures are converted (alpha dropped as diffusers does, 16 bits scaled, never clipped), masks in any mode give the same
tokens, and every impossible request is a ValueError naming the argument (the CLI: exit 2, one line)."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_harmon.modeling_harmon_canvas import init_pixels, redraw_tokens


SIZE, STRIDE = 32, 4
FAST = {"num_sampling_steps": 2, "guidance_scale": 2.0}


def _scene() -> np.ndarray:
    pixels = np.full((SIZE, SIZE, 3), 235, dtype=np.uint8)
    pixels[6:18, 4:16] = (220, 30, 30)
    pixels[14:28, 18:30] = (30, 40, 220)
    return pixels


def _as_mode(pixels: np.ndarray, mode: str) -> Image.Image:
    """The same picture as a PIL image of `mode`, as a user's file of that kind would decode."""
    rgb = Image.fromarray(pixels)
    if mode == "I;16":  # 16-bit grayscale PNG: values scaled by 257, the full 16-bit range
        gray = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        return Image.fromarray(gray)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]))
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_init_images_of_every_mode_become_the_same_pixels_as_their_rgb(mode):
    pixels = _scene()
    expected_rgb = Image.fromarray(pixels)
    if mode in ("L", "LA", "I;16"):  # grayscale files: the RGB they stand for is their gray
        expected_rgb = expected_rgb.convert("L").convert("RGB")
    if mode == "P":  # a palette file: the RGB its palette gives
        expected_rgb = expected_rgb.convert("P").convert("RGB")
    got = init_pixels(_as_mode(pixels, mode))
    expected = init_pixels(expected_rgb)
    assert got.shape == (1, 3, SIZE, SIZE)
    assert torch.allclose(got, expected, atol=1 / 255), mode


def test_alpha_is_dropped_as_diffusers_and_the_reference_do():
    """A transparent pixel keeps the colour stored under it (PIL's convert("RGB"), as diffusers' image processor and
    the reference's preprocessing do), so a file gives the same tokens in every one of them."""
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)  # fully transparent black everywhere
    rgba[:8, :8] = (200, 0, 0, 255)
    pixels = init_pixels(Image.fromarray(rgba))
    assert torch.allclose(pixels[0, :, -1, -1], -torch.ones(3))  # transparent black -> black (-1 in [-1, 1])
    assert pixels[0, 0, 0, 0] > 0.5 and pixels[0, 1, 0, 0] < -0.9  # the opaque red stays red


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "I;16"])
def test_masks_in_every_mode_select_the_same_tokens(mode):
    array = np.zeros((SIZE, SIZE), dtype=np.uint8)
    array[8:20, 0:12] = 255
    expected = redraw_tokens(Image.fromarray(array), SIZE, SIZE, STRIDE)
    if mode == "I;16":
        mask = Image.fromarray(array.astype(np.uint16) * 257)
    elif mode == "RGBA":
        mask = Image.fromarray(np.dstack([array] * 3 + [np.full_like(array, 255)]))
    else:
        mask = Image.fromarray(array).convert(mode)
    assert torch.equal(redraw_tokens(mask, SIZE, SIZE, STRIDE), expected), mode
    assert int(expected.sum()) == 3 * 3  # rows 2..4 and columns 0..2 of the 8 x 8 grid


@pytest.mark.parametrize(
    "strength, words",
    [
        (-0.1, "strength must be a number in [0, 1]"),
        (1.0001, "strength must be a number in [0, 1]"),
        (float("nan"), "strength must be a number in [0, 1]"),
        ("0.5", "strength must be a number in [0, 1]"),
        (True, "strength must be a number in [0, 1]"),
    ],
)
def test_strength_outside_zero_one_or_not_a_number_is_refused(tiny_model, tokenizer, strength, words):
    with pytest.raises(ValueError) as caught:
        tiny_model.generate_images(
            "a red circle", init_image=Image.fromarray(_scene()), strength=strength, tokenizer=tokenizer, **FAST
        )
    assert words in str(caught.value)


def test_a_tensor_init_image_outside_zero_one_or_not_finite_is_refused(tiny_model, tokenizer):
    for value, words in ((torch.full((3, SIZE, SIZE), 2.0), "it must lie in [0, 1]"), (None, "non-finite")):
        if value is None:
            value = torch.zeros(3, SIZE, SIZE)
            value[0, 0, 0] = float("nan")
        with pytest.raises(ValueError) as caught:
            tiny_model.generate_images("x", init_image=value, strength=0.5, tokenizer=tokenizer, **FAST)
        assert "init_image" in str(caught.value) and words in str(caught.value)


# ------------------------------------------------------------------------------------------------ the commands
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    pixels = _scene()
    Image.fromarray(pixels).save(folder / "scene.png")
    _as_mode(pixels, "I;16").save(folder / "scene16.png")
    _as_mode(pixels, "RGBA").save(folder / "scene_rgba.png")
    Image.fromarray(pixels).convert("L").save(folder / "gray.png")
    mask = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    mask[:, :16] = (255, 255, 255, 255)
    mask[:, 16:, 3] = 255
    Image.fromarray(mask).save(folder / "mask_rgba.png")
    Image.new("L", (SIZE, SIZE), 0).save(folder / "black.png")
    return folder


@pytest.mark.parametrize("image", ["scene16.png", "scene_rgba.png", "gray.png"])
def test_commands_take_16_bit_alpha_and_grayscale_pictures_and_rgba_masks(files, tmp_path, image, capsys):
    from harmon_pipelines.cli import main

    argv = ["inpaint", str(files / image), "--mask", str(files / "mask_rgba.png"), "a red circle", "--steps", "1"]
    assert main([*argv, "-o", str(tmp_path / "out.png")]) == 0, capsys.readouterr().err
    out = Image.open(tmp_path / "out.png")
    assert out.size == (SIZE, SIZE) and out.mode == "RGB"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["inpaint", "{scene}", "--mask", "{black}", "x"], "selects no token to redraw"),
        (["outpaint", "{scene}", "--right", "0", "x"], "outpaint needs --left, --right, --top or --bottom"),
        (["outpaint", "{scene}", "--right", "-4", "x"], "argument --right: must be a whole number of pixels"),
        (["outpaint", "{scene}", "--right", "4000", "--bottom", "4000", "x"], "max_position_embeddings"),
        (["vary", "{scene}", "--strength", "nan", "x"], "argument --strength: must be a number in [0, 1]"),
        (["vary", "{scene}", "--strength", "-0.5", "x"], "argument --strength: must be a number in [0, 1]"),
        (["inpaint", "{scene}", "--mask", "{scene}.missing", "x"], "--mask"),
    ],
)
def test_impossible_requests_exit_2_with_one_line_naming_the_argument(files, tmp_path, argv, words, capsys):
    from harmon_pipelines.cli import main

    names = {"scene": str(files / "scene.png"), "black": str(files / "black.png")}
    argv = [part.format(**names) for part in argv]
    assert main([*argv, "-o", str(tmp_path / "refused.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, (argv, err)
    assert not (tmp_path / "refused.png").exists()


def test_vary_takes_its_prompt_after_the_flags_too(files, tmp_path, capsys):
    from harmon_pipelines.cli import main

    scene = str(files / "scene.png")
    for order in (
        ["vary", scene, "--strength", "0.5", "a red circle", "--steps", "1"],
        ["vary", scene, "a red circle", "--strength", "0.5", "--steps", "1"],
    ):
        assert main([*order, "-o", str(tmp_path / "v.png")]) == 0, capsys.readouterr().err
        metadata = __import__("json").loads(Image.open(tmp_path / "v.png").text["harmon"])
        assert metadata["prompt"] == "a red circle" and metadata["prompt_source"] == "given"
    assert main(["vary", scene, "--strength", "0.5", "a", "b", "-o", str(tmp_path / "w.png")]) == 2
    assert "unrecognized arguments: a b" in capsys.readouterr().err


def test_the_pipeline_takes_a_list_of_pictures_one_per_prompt(tiny_model, tokenizer):
    from harmon_pipelines import HarmonInpaintPipeline

    pipe = HarmonInpaintPipeline(model=tiny_model, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    first, second = Image.fromarray(_scene()), Image.fromarray(255 - _scene())
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, :16] = 255
    common = {"mask_image": Image.fromarray(mask), "output_type": "latent", **FAST}
    both = pipe(
        ["a", "b"], image=[first, second], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **common
    )
    alone = [
        pipe(prompt, image=image, generator=torch.Generator().manual_seed(seed), **common).images
        for prompt, image, seed in (("a", first, 0), ("b", second, 1))
    ]
    known = [tiny_model.model.encode_images(init_pixels(image)) for image in (first, second)]
    for index in range(2):
        drawn = tiny_model.model.latents_to_tokens(both.images[index : index + 1])
        # Its own picture kept (to float rounding: two pictures go through the VAE encoder as one batch).
        assert torch.allclose(drawn[:, :, 4:], known[index][:, :, 4:].to(drawn.dtype), atol=1e-6)
        assert torch.allclose(both.images[index], alone[index][0], rtol=1e-4, atol=1e-4)
