"""Generation conditioned on an image through the MAR mask (issue 21, model level): inpainting (`init_image` +
`mask_image`), variations (`strength`), the pixel-mask -> token-mask rule and the iteration scaling."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_harmon.modeling_harmon_canvas import init_pixels, redraw_count, redraw_tokens, scaled_iterations
from modeling_harmon.modeling_harmon_settings import HarmonSettingError


SIZE = 32  # the tiny model's image side; its token stride is 4, so an 8 x 8 grid of 64 tokens
STRIDE = 4
FAST = {"num_sampling_steps": 2, "guidance_scale": 2.0}


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[4:20, 6:26] = (220, 30, 30)
    pixels[20:, :] = (30, 40, 220)
    return Image.fromarray(pixels)


def _mask(box=None, value: int = 255, mode: str = "L") -> Image.Image:
    """A mask white inside `box` (top, left, bottom, right) and black elsewhere; `box=None`: all white."""
    array = np.zeros((SIZE, SIZE), dtype=np.uint8)
    if box is None:
        array[:] = value
    else:
        top, left, bottom, right = box
        array[top:bottom, left:right] = value
    return Image.fromarray(array).convert(mode)


def test_one_white_pixel_redraws_exactly_its_token_and_grey_below_half_redraws_none():
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[9, 13] = 255  # token (row 2, col 3)
    tokens = redraw_tokens(Image.fromarray(mask), SIZE, SIZE, STRIDE)
    assert tokens.shape == (1, 8, 8) and tokens.sum() == 1 and bool(tokens[0, 2, 3])
    mask[9, 13] = 127  # less than half white: kept
    assert redraw_tokens(Image.fromarray(mask), SIZE, SIZE, STRIDE).sum() == 0


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "1", "I;16"])
def test_masks_of_every_mode_give_the_same_tokens(mode):
    expected = redraw_tokens(_mask((0, 0, 12, 16)), SIZE, SIZE, STRIDE)
    mask = _mask((0, 0, 12, 16)).convert(mode) if mode != "I;16" else _mask((0, 0, 12, 16), 255).convert("I;16")
    assert torch.equal(redraw_tokens(mask, SIZE, SIZE, STRIDE), expected)
    assert expected.sum() == 3 * 4  # rows 0..2, cols 0..3


def test_an_all_white_mask_with_full_iterations_is_text_to_image(tiny_model, tokenizer, init_image):
    common = dict(tokenizer=tokenizer, num_iter=4, **FAST)
    plain = tiny_model.generate_images("a red circle", generator=_seed(3), **common)
    masked = tiny_model.generate_images(
        "a red circle", init_image=init_image, mask_image=_mask(), generator=_seed(3), **common
    )
    assert torch.equal(plain.latents, masked.latents) and torch.equal(plain.images, masked.images)


def test_known_tokens_are_kept_exactly_and_both_guidance_halves_see_them(tiny_model, tokenizer, init_image):
    box = (0, 0, 16, 32)  # the top half: rows 0..3 of the token grid are redrawn
    output = tiny_model.generate_images(
        "a red circle", init_image=init_image, mask_image=_mask(box), generator=_seed(1), tokenizer=tokenizer, **FAST
    )
    known = tiny_model.model.encode_images(init_pixels(init_image))  # (1, rows, cols, D)
    drawn = tiny_model.model.latents_to_tokens(output.latents)
    assert torch.equal(drawn[:, 4:], known[:, 4:].to(drawn.dtype))
    assert not torch.allclose(drawn[:, :4], known[:, :4].to(drawn.dtype))


def test_iterations_scale_with_the_share_drawn_unless_given(tiny_model, tokenizer, init_image):
    steps = []

    def count(step, num_iter, tokens, mask):
        steps.append(num_iter)

    mask = _mask((0, 0, 8, 32))  # 2 of 8 token rows: 16 of 64 tokens
    tiny_model.generate_images(
        "a red circle",
        init_image=init_image,
        mask_image=mask,
        tokenizer=tokenizer,
        callback=count,
        generator=_seed(),
        **FAST,
    )
    default = tiny_model.image_generation_settings().num_iter
    assert steps[0] == scaled_iterations(default, 16, 64) == -(-default * 16 // 64)
    steps.clear()
    tiny_model.generate_images(
        "a red circle",
        init_image=init_image,
        mask_image=mask,
        tokenizer=tokenizer,
        callback=count,
        generator=_seed(),
        num_iter=3,
        **FAST,
    )
    assert steps[0] == 3 and len(steps) == 3
    with pytest.raises(HarmonSettingError, match=r"num_iter must be an integer in \[1, 16\]"):
        tiny_model.generate_images(
            "a red circle", init_image=init_image, mask_image=mask, tokenizer=tokenizer, num_iter=17, **FAST
        )


def test_variations_redraw_the_share_strength_says(tiny_model, tokenizer, init_image):
    known = tiny_model.model.encode_images(init_pixels(init_image)).reshape(1, 64, -1)
    for strength in (0.25, 0.5):
        output = tiny_model.generate_images(
            "a red circle", init_image=init_image, strength=strength, tokenizer=tokenizer, generator=_seed(2), **FAST
        )
        drawn = tiny_model.model.latents_to_tokens(output.latents).reshape(1, 64, -1)
        kept = (drawn == known).all(-1).sum()
        assert int(kept) == 64 - redraw_count(strength, 64), strength
    again = tiny_model.generate_images(
        "a red circle", init_image=init_image, strength=0.5, tokenizer=tokenizer, generator=_seed(2), **FAST
    )
    other = tiny_model.generate_images(
        "a red circle", init_image=init_image, strength=0.5, tokenizer=tokenizer, generator=_seed(5), **FAST
    )
    assert torch.equal(again.latents, output.latents) and not torch.equal(other.latents, output.latents)
    untouched = tiny_model.generate_images("a red circle", init_image=init_image, strength=0.0, tokenizer=tokenizer)
    assert torch.equal(tiny_model.model.latents_to_tokens(untouched.latents).reshape(1, 64, -1), known)


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({"mask_image": "BLACK"}, "mask_image selects no token to redraw"),
        ({"mask_image": Image.new("L", (16, 16), 255)}, "mask_image is 16x16 pixels but the image is 32x32"),
        ({"init_image": Image.new("RGB", (30, 32))}, "init_image is 30x32 pixels"),
        ({"height": 64}, "height (64) must match init_image"),
        ({"strength": 1.5}, "strength must be a number in [0, 1]"),
        ({"init_image": None, "strength": 0.5}, "strength applies to an init_image"),
        ({"init_image": None, "mask_image": "WHITE"}, "mask_image needs an init_image"),
    ],
)
def test_bad_canvases_are_refused_naming_the_argument(tiny_model, tokenizer, init_image, arguments, words):
    arguments = {"init_image": init_image, **arguments}
    if arguments.get("mask_image") in ("BLACK", "WHITE"):
        arguments["mask_image"] = _mask(value=0) if arguments["mask_image"] == "BLACK" else _mask()
    with pytest.raises(ValueError) as caught:
        tiny_model.generate_images("a red circle", tokenizer=tokenizer, **arguments, **FAST)
    assert words in str(caught.value)


# ------------------------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def inpaint(tiny_model, tokenizer):
    from harmon_pipelines import HarmonInpaintPipeline

    pipe = HarmonInpaintPipeline(model=tiny_model, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_inpaint_pipeline_with_an_all_white_mask_draws_what_text_to_image_draws(inpaint, init_image):
    from harmon_pipelines import HarmonPipeline

    plain = HarmonPipeline(model=inpaint.model, tokenizer=inpaint.tokenizer)
    plain.set_progress_bar_config(disable=True)
    common = dict(num_inference_steps=4, output_type="np", **FAST)
    expected = plain("a red circle", generator=_seed(4), **common).images
    drawn = inpaint("a red circle", image=init_image, mask_image=_mask(), generator=_seed(4), **common).images
    np.testing.assert_array_equal(drawn, expected)


def test_the_inpaint_pipeline_keeps_what_the_mask_leaves_and_counts_its_iterations(inpaint, init_image):
    steps = []

    def count(pipe, step, timestep, callback_kwargs):
        steps.append(step)
        return {}

    mask = _mask((0, 0, 8, 32))  # 16 of 64 tokens
    output = inpaint(
        "a red circle",
        image=init_image,
        mask_image=mask,
        generator=_seed(),
        output_type="latent",
        callback_on_step_end=count,
        **FAST,
    )
    default = inpaint.model.image_generation_settings().num_iter
    assert len(steps) == scaled_iterations(default, 16, 64) == inpaint.num_timesteps
    known = inpaint.model.model.encode_images(init_pixels(init_image))
    drawn = inpaint.model.model.latents_to_tokens(output.images)
    assert torch.equal(drawn[:, 2:], known[:, 2:])
    with pytest.raises(ValueError, match="image is required"):
        inpaint("a red circle", mask_image=mask)
    with pytest.raises(ValueError, match=r"height \(64\) must match image \(32 pixels\)"):
        inpaint("a red circle", image=init_image, height=64)


def test_variations_through_the_pipeline(inpaint, init_image):
    common = dict(image=init_image, output_type="np", **FAST)
    kept = inpaint("a red circle", strength=0.0, generator=_seed(), **common).images
    round_trip = inpaint.model.model.decode_latents(
        inpaint.model.model.tokens_to_latents(inpaint.model.model.encode_images(init_pixels(init_image)))
    )
    np.testing.assert_allclose(kept[0], ((round_trip[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(), atol=1e-6)
    first, second = (inpaint("a red circle", strength=0.5, generator=_seed(s), **common).images for s in (1, 2))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("pads, size", [({"right": 16}, (32, 48)), ({"top": 8, "left": 4}, (40, 36))])
def test_outpainting_draws_a_larger_and_non_square_canvas(inpaint, init_image, pads, size):
    from modeling_harmon.modeling_harmon_canvas import outpaint_canvas

    canvas, mask = outpaint_canvas(init_image, STRIDE, **pads)
    assert (canvas.height, canvas.width) == size
    tokens = redraw_tokens(mask, *size, STRIDE)
    assert int(tokens.sum()) == size[0] * size[1] // STRIDE**2 - 64  # exactly the padding's tokens
    output = inpaint("a red circle", image=canvas, mask_image=mask, generator=_seed(), output_type="latent", **FAST)
    drawn = inpaint.model.model.latents_to_tokens(output.images)
    known = inpaint.model.model.encode_images(init_pixels(canvas))
    assert drawn.shape[1:3] == (size[0] // STRIDE, size[1] // STRIDE)
    assert torch.equal(drawn[~tokens], known[~tokens])


@pytest.mark.parametrize(
    "pads, words",
    [
        ({}, "needs padding on at least one side"),
        ({"left": 6}, "left must be a non-negative multiple of 4"),
        ({"right": -4}, "right must be a non-negative multiple of 4"),
    ],
)
def test_bad_outpainting_is_refused(init_image, pads, words):
    from modeling_harmon.modeling_harmon_canvas import outpaint_canvas

    with pytest.raises(ValueError, match=words):
        outpaint_canvas(init_image, STRIDE, **pads)


def test_a_canvas_beyond_the_llms_positions_is_refused_before_drawing(inpaint, init_image):
    from modeling_harmon.modeling_harmon_canvas import outpaint_canvas

    limit = inpaint.model.config.text_config.max_position_embeddings
    side = STRIDE * (int(limit**0.5) + 2)  # more tokens than the LLM has positions
    canvas, mask = outpaint_canvas(init_image, STRIDE, right=side - SIZE, bottom=side - SIZE)
    with pytest.raises(ValueError, match="do not fit in the language model's max_position_embeddings"):
        inpaint("a red circle", image=canvas, mask_image=mask, **FAST)


# ------------------------------------------------------------------------------------------------ the commands
def test_inpaint_outpaint_and_vary_commands(tmp_path, capsys):
    import json

    from harmon_pipelines.cli import main

    scene, mask = tmp_path / "scene.png", tmp_path / "mask.png"
    assert main(["generate", "a red circle to the left of a blue square", "-o", str(scene), "--seed", "1"]) == 0
    _mask((0, 0, 32, 16)).save(mask)
    runs = {
        "inpaint": ["inpaint", str(scene), "--mask", str(mask), "a green triangle to the left of a blue square"],
        "outpaint": ["outpaint", str(scene), "--right", "16", "a red circle to the left of a blue square"],
        "vary": ["vary", str(scene), "--strength", "0.5", "-n", "2"],
    }
    for name, argv in runs.items():
        assert main([*argv, "-o", str(tmp_path / f"{name}.png")]) == 0, capsys.readouterr().err
    metadata = {
        name: json.loads(Image.open(tmp_path / f"{name}{'_0' if name == 'vary' else ''}.png").text["harmon"])
        for name in runs
    }
    assert Image.open(tmp_path / "outpaint.png").size == (48, 32)
    assert (
        metadata["inpaint"]["inputs"]["mask"] == str(mask) and len(metadata["inpaint"]["inputs"]["mask_sha256"]) == 64
    )
    assert metadata["vary"]["prompt_source"] == "the model's caption of IMAGE" and metadata["vary"]["prompt"]
    assert metadata["vary"]["strength"] == 0.5 and metadata["outpaint"]["inputs"]["right"] == 16
    capsys.readouterr()
    Image.new("L", (16, 16), 255).save(tmp_path / "small_mask.png")
    Image.new("RGB", (30, 32), "white").save(tmp_path / "odd.png")
    refusals = [
        (
            ["inpaint", str(scene), "--mask", str(tmp_path / "small_mask.png"), "x"],
            "--mask is 16x16 pixels but IMAGE is 32x32",
        ),
        (["outpaint", str(scene), "x"], "outpaint needs --left, --right, --top or --bottom"),
        (["outpaint", str(scene), "--left", "6", "x"], "--left must be a non-negative multiple of 4"),
        (["vary", str(scene), "--strength", "2"], "argument --strength: must be a number in [0, 1]"),
        (["inpaint", str(tmp_path / "nope.png"), "--mask", str(mask), "x"], "IMAGE"),
        (["vary", str(tmp_path / "odd.png"), "x"], "is 30x32 pixels; its sides must be multiples of 4"),
    ]
    for argv, words in refusals:
        assert main([*argv, "-o", str(tmp_path / "refused.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (argv, err)
    assert not (tmp_path / "refused.png").exists()


# ------------------------------------------------------------------------------------------------ ShapesEval
def test_inpaint_items_change_one_attribute_of_one_object_within_the_worlds_rules():
    from harmon_training.shapes.evaluation_inpaint import inpaint_items, object_mask
    from harmon_training.shapes.world import HELD_OUT_PAIRS

    items = inpaint_items(40, seed=3)
    assert items == inpaint_items(40, seed=3) and items != inpaint_items(40, seed=4)
    for item in items:
        source, target, index = item["source"], item["target"], item["index"]
        assert source.objects[1 - index] == target.objects[1 - index] and source.relation == target.relation
        before, after = source.objects[index], target.objects[index]
        assert (before.color != after.color) == (item["attribute"] == "color") != (before.shape != after.shape)
        colors, shapes = {obj.color for obj in target.objects}, {obj.shape for obj in target.objects}
        assert len(colors) == len(shapes) == 2 and not target.held_out
        assert not any((obj.color, obj.shape) in HELD_OUT_PAIRS for obj in target.objects)
        mask = object_mask(source, index, 32)
        other = object_mask(source, 1 - index, 32)
        assert mask.any() and not (mask & other).any()  # the two cells never overlap


def test_harmon_eval_shapes_inpaint_writes_its_scores(tmp_path, capsys):
    import json

    from harmon_pipelines.cli import main

    assert main(["eval", "shapes", "--task", "inpaint", "--n", "2", "--json", str(tmp_path / "inpaint.json")]) == 0
    results = json.loads((tmp_path / "inpaint.json").read_text())
    for name in ("success", "kept", "text_to_image"):
        assert set(results[name]) == {"value", "count", "n", "se"} and results[name]["n"] == 2
    assert "success" in capsys.readouterr().out and results["psnr_unmasked_db"] > 0


def test_paste_back_keeps_the_source_pixels_outside_the_mask(inpaint, init_image):
    mask = _mask((0, 0, 16, 32))
    pasted = inpaint("a red circle", image=init_image, mask_image=mask, paste_back=True, generator=_seed(), **FAST)
    raw = inpaint("a red circle", image=init_image, mask_image=mask, paste_back=False, generator=_seed(), **FAST)
    default = inpaint("a red circle", image=init_image, mask_image=mask, generator=_seed(), **FAST)
    assert np.array_equal(np.asarray(default.images[0]), np.asarray(pasted.images[0]))  # on by default
    pasted, raw, source = (np.asarray(image) for image in (pasted.images[0], raw.images[0], init_image))
    assert np.array_equal(pasted[16:], source[16:]) and not np.array_equal(raw[16:], source[16:])
    assert np.array_equal(pasted[:16], raw[:16])  # inside the mask: what was drawn
    with pytest.raises(ValueError, match="paste_back needs a mask_image"):
        inpaint("a red circle", image=init_image, strength=0.5, paste_back=True, **FAST)


def test_harmon_eval_shapes_vary_writes_its_scores(tmp_path, capsys):
    import json

    from harmon_pipelines.cli import main

    assert main(["eval", "shapes", "--task", "vary", "--n", "2", "--json", str(tmp_path / "vary.json")]) == 0
    results = json.loads((tmp_path / "vary.json").read_text())
    assert set(results["strengths"]) == {"0.3", "0.6"}
    for scores in results["strengths"].values():
        assert scores["preserved"]["n"] == 4 and scores["distinct"]["n"] == 2 and scores["mean_abs_change"] >= 0
    assert "strength 0.3 preserved" in capsys.readouterr().out


def test_outpaint_items_keep_one_object_in_the_given_half_and_the_cli_scores_them(tmp_path, capsys):
    import json

    from harmon_pipelines.cli import main
    from harmon_training.shapes.checker import detect
    from harmon_training.shapes.evaluation_outpaint import half_and_padding, outpaint_items
    from harmon_training.shapes.world import render

    for scene in outpaint_items(12, seed=1):
        half, padding = half_and_padding(scene, render(scene))
        assert sum(padding.values()) == 16 and half.size in ((16, 32), (32, 16))
        canvas = Image.new("RGB", (32, 32), (235, 235, 235))
        offset = (padding.get("left", 0), padding.get("top", 0))
        canvas.paste(half, offset)
        found = detect(canvas)
        first = scene.objects[0]
        assert [(obj.color, obj.shape) for obj in found] == [(first.color, first.shape)]  # only the kept object
    assert main(["eval", "shapes", "--task", "outpaint", "--n", "2", "--json", str(tmp_path / "out.json")]) == 0
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["success"]["n"] == results["text_to_image"]["n"] == 2
