"""Instruction editing through its entry points (issue 24): `HarmonImageEditPipeline` (the same images as
`generate_images(context_images=...)`, guidance row groups, output types, callbacks, an edit inside a mask, several
turns, refusals naming `image`, the not-trained warning), `harmon edit`, and edit lines of `harmon generate
--prompts` (files, sidecars, resume against changed pictures). All on the tiny random model, 32 x 32 pictures."""

import hashlib
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmon_pipelines import HarmonImageEditPipeline, batch_jobs
from harmon_pipelines.cli import main


FAST = {"num_inference_steps": 2, "num_sampling_steps": 2}
FAST_FLAGS = ["--steps", "2", "--head-steps", "1"]


def seeds(*values) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(value) for value in values]


def picture(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8))


def half_mask() -> Image.Image:
    array = np.zeros((32, 32), dtype=np.uint8)
    array[:, :16] = 255  # the left half: 32 of the 64 tokens
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def pipe(tiny_model, tokenizer):
    pipeline = HarmonImageEditPipeline(model=tiny_model, tokenizer=tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def trained_tasks(tiny_model):
    """Sets `tiny_model.config.trained_tasks` for one test and restores it."""
    before = tiny_model.config.trained_tasks
    yield lambda tasks: setattr(tiny_model.config, "trained_tasks", tasks)
    tiny_model.config.trained_tasks = before


# ------------------------------------------------------------------------------------------------- the pipeline
def test_the_pipeline_draws_what_generate_images_draws(pipe, tiny_model, tokenizer):
    prompts = ["make the circle blue", "remove the square"]
    images = [[picture(1)], [picture(2), picture(3)]]  # one list per prompt, of different lengths
    common = {"guidance_scale": 2.0, "image_guidance_scale": 1.5, "num_sampling_steps": 2}
    drawn = pipe(
        prompts,
        image=images,
        num_inference_steps=2,
        num_images_per_prompt=2,
        generator=seeds(1, 2, 3, 4),
        output_type="pt",
        **common,
    ).images
    expected = tiny_model.generate_images(
        prompts,
        context_images=images,
        tokenizer=tokenizer,
        num_iter=2,
        num_images_per_prompt=2,
        generator=seeds(1, 2, 3, 4),
        **common,
    ).images
    torch.testing.assert_close(drawn, (expected / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)
    assert (pipe.guidance_scale, pipe.image_guidance_scale) == (2.0, 1.5)
    # The image matters: another picture, the same seed, another result.
    alone = {"num_inference_steps": 2, **common}
    same = pipe(prompts[0], image=picture(1), generator=seeds(1), output_type="pt", **alone).images
    torch.testing.assert_close(same[0], drawn[0], atol=1e-4, rtol=0)  # alone as in a batch, up to float rounding
    # (latents: the tiny random VAE's decoder hardly shows their differences)
    latents = pipe(prompts[0], image=picture(1), generator=seeds(1), output_type="latent", **alone).images
    other = pipe(prompts[0], image=picture(4), generator=seeds(1), output_type="latent", **alone).images
    assert (other - latents).abs().max() > 1e-3


@pytest.mark.parametrize("scales, groups", [((1.0, 1.0), 1), ((2.0, 1.0), 2), ((2.0, 1.5), 3), ((1.0, 1.5), 3)])
def test_the_guidance_scales_choose_the_row_groups(pipe, tiny_model, monkeypatch, scales, groups):
    seen = []
    build = tiny_model._context_prompt_batch

    def spy(*args, **kwargs):
        seen.append(build(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(tiny_model, "_context_prompt_batch", spy)
    pipe(
        "make it blue",
        image=[picture(1), picture(2)],
        guidance_scale=scales[0],
        image_guidance_scale=scales[1],
        generator=seeds(0),
        output_type="latent",
        **FAST,
    )
    assert [batch.groups for batch in seen] == [groups]
    assert seen[0].input_ids.shape[0] == groups


def test_the_image_guidance_scale_defaults_to_the_models_setting(pipe):
    pipe("make it blue", image=picture(1), generator=seeds(0), output_type="latent", **FAST)
    assert pipe.image_guidance_scale == 1.0  # the settings field's default; a checkpoint may store its own


def test_output_types_and_the_output_size(pipe, tiny_model):
    common = {"image": picture(1), "guidance_scale": 2.0, "image_guidance_scale": 1.5, **FAST}
    pil = pipe("make it blue", generator=seeds(5), **common).images
    array = pipe("make it blue", generator=seeds(5), output_type="np", **common).images
    tensor = pipe("make it blue", generator=seeds(5), output_type="pt", **common).images
    latents = pipe("make it blue", generator=seeds(5), output_type="latent", **common).images
    assert isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)
    assert array.shape == (1, 32, 32, 3) and tensor.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype(np.uint8))
    grid = 32 // tiny_model.config.vae_stride
    assert latents.shape == (1, tiny_model.config.vae_latent_channels, grid, grid)
    wide = pipe("make it blue", height=16, width=24, generator=seeds(5), return_dict=False, **common)
    assert isinstance(wide, tuple) and wide[0][0].size == (24, 16)  # without a mask: the size asked for


def test_callbacks_see_every_iteration_and_can_interrupt(pipe, tiny_model):
    calls = []

    def callback(pipeline, step, timestep, tensors):
        calls.append((step, timestep, tensors["latents"].shape, int(tensors["mask"].sum())))
        return {}

    pipe(
        "make it blue",
        image=picture(1),
        num_inference_steps=3,
        num_sampling_steps=1,
        generator=seeds(0),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "mask"],
    )
    grid = 32 // tiny_model.config.vae_stride
    assert [step for step, *_ in calls] == [0, 1, 2] and calls[-1][1] == 0
    assert all(shape == (1, tiny_model.config.vae_latent_channels, grid, grid) for _, _, shape, _ in calls)
    assert all(timestep == masked for _, timestep, _, masked in calls)

    def stop(pipeline, step, timestep, tensors):
        calls.append(step)
        pipeline._interrupt = True
        return {}

    calls.clear()
    pipe(
        "make it blue",
        image=picture(1),
        num_inference_steps=3,
        num_sampling_steps=1,
        generator=seeds(0),
        callback_on_step_end=stop,
    )
    assert calls == [0]


def test_an_edit_inside_a_mask_keeps_the_rest_and_a_second_turn_edits_the_result(pipe, tiny_model, tokenizer):
    source = picture(3)
    edited = pipe(
        "make it blue",
        image=source,
        mask_image=half_mask(),
        generator=seeds(0),
        output_type="latent",
        num_sampling_steps=2,
    ).images
    expected = tiny_model.generate_images(
        "make it blue",
        context_images=source,
        init_image=source,
        mask_image=half_mask(),
        tokenizer=tokenizer,
        generator=seeds(0),
        num_sampling_steps=2,
        decode=False,
    ).latents
    torch.testing.assert_close(edited, expected, atol=1e-6, rtol=0)
    from modeling_harmon.modeling_harmon_canvas import init_pixels

    known = tiny_model.model.encode_images(init_pixels(source))
    drawn = tiny_model.model.latents_to_tokens(edited)
    assert torch.allclose(drawn[:, :, 4:], known[:, :, 4:].to(drawn.dtype), atol=1e-6)  # right half kept
    with pytest.raises(ValueError, match=r"height \(16\) must match image \(32 pixels\)"):
        pipe("make it blue", image=source, mask_image=half_mask(), height=16, **FAST)
    # Turn two: the first result is the picture the next instruction is about.
    first = pipe("make the circle blue", image=source, generator=seeds(1), **FAST).images[0]
    second = pipe("now remove the square", image=first, generator=seeds(1), output_type="np", **FAST).images
    assert second.shape == (1, 32, 32, 3) and np.isfinite(second).all()


def test_the_pipeline_saves_and_loads_with_its_base_file(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "edit")
    index = json.loads((tmp_path / "edit" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_harmon_edit", "HarmonImageEditPipeline"]
    assert {"pipeline_harmon.py", "pipeline_harmon_edit.py"} <= {path.name for path in (tmp_path / "edit").iterdir()}
    loaded = HarmonImageEditPipeline.from_pretrained(tmp_path / "edit")
    assert type(loaded) is HarmonImageEditPipeline
    assert type(HarmonImageEditPipeline.from_pipe(pipe)) is HarmonImageEditPipeline


def _too_many(tokenizer, tiny_model):
    per_image = tiny_model._prompt_processor(tokenizer).image_processor.num_image_placeholders(32, 32)
    return tiny_model.config.text_config.max_position_embeddings // per_image + 1


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({}, "image is required: the picture to edit"),
        ({"image": []}, "image is an empty list"),
        ({"image": [[picture(1)], []]}, r"image\[1\] is an empty list"),
        ({"image": [picture(1), [picture(2)]]}, "image mixes pictures and lists"),
        ({"image": np.zeros((32, 32, 3), dtype=np.uint8)}, "image must be a PIL image.*got ndarray"),
        ({"image": ["scene.png"]}, "image must hold PIL images, got str"),
        ({"image": Image.new("La", (32, 32))}, "image: .*mode La"),  # a mode PIL cannot convert to RGB
        ({"image": Image.fromarray(np.full((32, 32), np.inf, dtype=np.float32))}, "image: .*NaN or infinite"),
        ({"image": [[picture(1)], [picture(2)]]}, "image holds 2 lists but there are 1 prompts"),
        ({"image": picture(1), "image_guidance_scale": 0.5}, "image_guidance_scale must be a finite number >= 1"),
        ({"image": picture(1), "image_guidance_scale": math.nan}, "image_guidance_scale must be a finite number"),
        ({"image": picture(1), "image_guidance_scale": math.inf}, "image_guidance_scale must be a finite number"),
        ({"image": Image.new("RGB", (30, 32)), "mask_image": Image.new("L", (30, 32), 255)}, "image is 30x32 pixels"),
        ({"image": picture(1), "mask_image": Image.new("L", (32, 32), 0)}, "mask_image selects no token"),
        ({"image": "TOO MANY"}, r"prompt with its image is \d+ tokens long.*max_position_embeddings.*fewer images"),
    ],
)
def test_bad_inputs_are_refused_naming_the_argument(pipe, tiny_model, tokenizer, arguments, words):
    if isinstance(arguments.get("image"), str):  # "TOO MANY": one picture more than the LLM's positions hold
        arguments = {"image": [picture(1)] * _too_many(tokenizer, tiny_model), "guidance_scale": 1.0}
    with pytest.raises(ValueError, match=words):
        pipe("make it blue", generator=seeds(0), **arguments, **FAST)
    assert pipe._context == {} and pipe._canvas == {}  # a refused call leaves nothing behind


def test_a_model_not_trained_for_editing_warns_once(tiny_model, tokenizer, trained_tasks):
    edit = HarmonImageEditPipeline(model=tiny_model, tokenizer=tokenizer)
    edit.set_progress_bar_config(disable=True)
    trained_tasks(["text2image", "vqa"])
    with pytest.warns(UserWarning, match=r"not trained for instruction editing.*\['text2image', 'vqa'\]"):
        edit("make it blue", image=picture(1), generator=seeds(0), output_type="latent", **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edit("make it blue", image=picture(1), generator=seeds(0), output_type="latent", **FAST)  # once
        for tasks in (["text2image", "edit"], None):  # trained for it, or unknown: no warning
            trained_tasks(tasks)
            fresh = HarmonImageEditPipeline(model=tiny_model, tokenizer=tokenizer)
            fresh.set_progress_bar_config(disable=True)
            fresh("make it blue", image=picture(1), generator=seeds(0), output_type="latent", **FAST)


# --------------------------------------------------------------------------------------------------- harmon edit
def call(capsys, *argv) -> tuple[int, list[str]]:
    """`harmon *argv` in this process: (exit status, stderr lines without progress bars)."""
    capsys.readouterr()
    code = main([str(item) for item in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and "%|" not in line]  # no progress bars


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """`jobs/in/` with two pictures, a mask of the left half and a mask too small for them."""
    root = tmp_path_factory.mktemp("edit") / "jobs"
    (root / "in").mkdir(parents=True)
    picture(1).save(root / "in" / "scene.png")
    picture(2).save(root / "in" / "shape.png")
    half_mask().save(root / "in" / "left.png")
    Image.new("L", (16, 16), 255).save(root / "in" / "small.png")
    return root


def test_harmon_edit_draws_as_the_pipeline_and_records_its_inputs(folder, tiny_dir, pipe, tmp_path, capsys):
    scene, shape, mask = (folder / "in" / name for name in ("scene.png", "shape.png", "left.png"))
    model = ["--model", tiny_dir, *FAST_FLAGS, "--cfg", "2", "--image-cfg", "1.5"]
    code, err = call(
        capsys,
        "edit",
        scene,
        "make the circle blue",
        "--also",
        shape,
        "-n",
        "2",
        "--seed",
        "3",
        "-o",
        tmp_path / "out.png",
        *model,
    )
    assert code == 0, err
    expected = pipe(
        "make the circle blue",
        image=[picture(1), picture(2)],
        generator=seeds(3, 4),
        guidance_scale=2.0,
        image_guidance_scale=1.5,
        num_inference_steps=2,
        num_sampling_steps=1,
        num_images_per_prompt=2,
    ).images
    for k in range(2):
        assert np.abs(pixels(tmp_path / f"out_{k}.png") - np.asarray(expected[k], dtype=np.int16)).max() <= 1
    metadata = json.loads(Image.open(tmp_path / "out_1.png").text["harmon"])
    assert metadata["mode"] == "edit" and metadata["prompt"] == "make the circle blue" and metadata["seed"] == 4
    assert metadata["inputs"] == {"edit": [str(scene), str(shape)], "edit_sha256": [sha256(scene), sha256(shape)]}
    assert metadata["settings"]["image_guidance_scale"] == 1.5 and metadata["settings"]["guidance_scale"] == 2.0

    code, err = call(
        capsys,
        "edit",
        scene,
        "make it blue",
        "--mask",
        mask,
        "-o",
        tmp_path / "masked.png",
        "--model",
        tiny_dir,
        "--head-steps",
        "1",
    )
    assert code == 0, err
    metadata = json.loads(Image.open(tmp_path / "masked.png").text["harmon"])
    assert metadata["inputs"]["mask_sha256"] == sha256(mask) and metadata["inputs"]["edit"] == [str(scene)]
    assert metadata["settings"]["num_inference_steps"] is None  # scaled by the share drawn, as inpainting does


def test_harmon_edit_refuses_bad_input_with_one_line(folder, tiny_dir, tiny_model, tokenizer, tmp_path, capsys):
    scene = folder / "in" / "scene.png"
    (folder / "in" / "text.png").write_text("not a picture")
    base = ["-o", tmp_path / "refused.png", "--model", tiny_dir, *FAST_FLAGS]
    too_many = [item for _ in range(_too_many(tokenizer, tiny_model) - 1) for item in ("--also", scene)]
    cases = [
        (["edit", scene, "x", "--image-cfg", "0.5"], "--image-cfg 0.5: must be a finite number >= 1"),
        (["edit", scene, "x", "--image-cfg", "nan"], "--image-cfg nan: must be a finite number >= 1"),
        (["edit", scene, "x", "--image-cfg", "inf"], "--image-cfg inf: must be a finite number >= 1"),
        (["edit", folder / "in" / "nope.png", "x"], "IMAGE"),
        (["edit", folder / "in" / "text.png", "x"], "is not an image PIL can read"),
        (["edit", scene, "x", "--also", folder / "in" / "nope.png"], "--also"),
        (["edit", scene, "x", "--mask", folder / "in" / "small.png"], "--mask is 16x16 pixels but IMAGE is 32x32"),
        (["edit", scene, "x", "--mask", folder / "in" / "left.png", "--size", "16"], "--size does not apply"),
        (["edit", scene, "  "], "PROMPT (the instruction) must not be empty"),
        (["edit", scene], "the following arguments are required: prompt"),
        (["edit", scene, "x", *too_many, "--cfg", "1"], r"image is \d+ tokens long.*max_position_embeddings"),
    ]
    for argv, words in cases:
        code, err = call(capsys, *argv, *base)
        assert code == 2 and len(err) == 1, (argv[:6], err)
        assert err[0].startswith("harmon edit: error: "), err[0]
        if ".*" in words:
            import re

            assert re.search(words, err[0]), (words, err[0])
        else:
            assert words in err[0], (words, err[0])
    assert not (tmp_path / "refused.png").exists()


def test_harmon_edit_says_once_that_the_model_was_not_trained_for_it(
    folder, tiny_model, tokenizer, trained_tasks, tmp_path, capsys
):
    trained_tasks(["text2image"])
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    code, err = call(
        capsys,
        "edit",
        folder / "in" / "scene.png",
        "make it blue",
        "-n",
        "2",
        "--batch-size",
        "1",
        "-o",
        tmp_path / "out.png",
        "--model",
        tmp_path / "model",
        *FAST_FLAGS,
    )
    assert code == 0 and err == [
        "harmon edit: warning: this Harmon model was not trained for instruction editing (its config.trained_tasks is "
        "['text2image']); it sees the image but was never taught to follow an edit instruction, so expect a new "
        "picture, not an edit."
    ], err


# ------------------------------------------------------------------------------------------- edit lines in JSONL
def write_jobs(path: Path, *entries: dict) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def edit_lines() -> list[dict]:
    return [
        {"prompt": "make the circle blue", "edit": "in/scene.png", "image_cfg": 1.5, "cfg": 2.0},
        {
            "prompt": "put the shape on the left",
            "edit": ["in/scene.png", "in/shape.png"],
            "mask": "in/left.png",
            "steps": 2,
            "seed": 3,
        },
        {"prompt": "a blue square", "size": 16},
    ]


def test_edit_lines_draw_as_harmon_edit_and_resume(folder, tiny_dir, tmp_path, capsys, monkeypatch):
    jobs = tmp_path / "jobs"
    shutil.copytree(folder, jobs)
    out = jobs / "out"
    write_jobs(jobs / "prompts.jsonl", *edit_lines())
    calls = []
    draw = batch_jobs.draw

    def counting(pipe, prompts, seeds_, settings, **inputs):
        calls.append((type(pipe).__name__, seeds_))
        return draw(pipe, prompts, seeds_, settings, **inputs)

    monkeypatch.setattr(batch_jobs, "draw", counting)
    base = [
        "generate",
        "--prompts",
        jobs / "prompts.jsonl",
        "--outdir",
        out,
        "-n",
        "2",
        "--model",
        tiny_dir,
        "--steps",
        "2",
        "--head-steps",
        "1",
        "--batch-size",
        "4",
    ]
    code, err = call(capsys, *base)
    assert code == 0, err
    assert [name for name, _ in calls] == ["HarmonImageEditPipeline"] * 2 + ["HarmonPipeline"]  # two masks: two calls
    assert {path.name for path in out.iterdir()} == {
        f"{line:05d}_{k}.{ext}" for line in (1, 2, 3) for k in (0, 1) for ext in ("png", "json")
    }
    sha = {name: sha256(jobs / "in" / f"{name}.png") for name in ("scene", "shape", "left")}
    records = {line: json.loads((out / f"{line:05d}_1.json").read_text()) for line in (1, 2, 3)}
    assert records[1]["mode"] == "edit" and records[1]["inputs"] == {
        "edit": ["in/scene.png"],
        "edit_sha256": [sha["scene"]],
    }
    assert records[1]["settings"]["image_guidance_scale"] == 1.5 and records[1]["settings"]["guidance_scale"] == 2.0
    assert records[2]["inputs"] == {
        "edit": ["in/scene.png", "in/shape.png"],
        "edit_sha256": [sha["scene"], sha["shape"]],
        "mask": "in/left.png",
        "mask_sha256": sha["left"],
    }
    assert records[2]["seed"] == 4 and records[2]["settings"]["image_guidance_scale"] == 1.0
    assert "mode" not in records[3] and "image_guidance_scale" not in records[3]["settings"]  # text lines as before
    for line, record in records.items():
        png = json.loads(Image.open(out / f"{line:05d}_1.png").text["harmon"])
        assert png == {key: value for key, value in record.items() if key not in ("line", "image")}

    # The same images as `harmon edit` (metadata equal but for the paths, given relative here).
    single = [
        "edit",
        jobs / "in" / "scene.png",
        "make the circle blue",
        "--image-cfg",
        "1.5",
        "--cfg",
        "2",
        "-n",
        "2",
        "-o",
        tmp_path / "single.png",
        "--model",
        tiny_dir,
        "--steps",
        "2",
        "--head-steps",
        "1",
    ]
    code, err = call(capsys, *single)
    assert code == 0, err
    for k in range(2):
        assert np.abs(pixels(out / f"00001_{k}.png") - pixels(tmp_path / f"single_{k}.png")).max() <= 1
        alone = json.loads(Image.open(tmp_path / f"single_{k}.png").text["harmon"])
        batch = json.loads(Image.open(out / f"00001_{k}.png").text["harmon"])
        assert {**alone, "inputs": None} == {**batch, "inputs": None}
        assert alone["inputs"]["edit_sha256"] == batch["inputs"]["edit_sha256"]

    # Resume: nothing to draw; a picture with other bytes under the same name is named and refused.
    calls.clear()
    code, err = call(capsys, *base)
    assert code == 0 and calls == [] and any("6 already written, 0 to draw" in line for line in err), err
    picture(9).save(jobs / "in" / "shape.png")
    code, err = call(capsys, *base)
    assert code == 2 and len(err) == 1 and calls == [], err
    for words in ("2 image(s)", "first: 00002_0.png", "inputs.edit_sha256", "'in/shape.png'", '("edit" of line 2)'):
        assert words in err[0], (words, err[0])
    code, err = call(capsys, *base, "--overwrite")
    assert code == 0 and [name for name, _ in calls] == ["HarmonImageEditPipeline"], err
    record = json.loads((out / "00002_0.json").read_text())
    assert record["inputs"]["edit_sha256"] == [sha["scene"], sha256(jobs / "in" / "shape.png")]


def test_bad_edit_lines_fail_with_one_line_naming_file_line_and_key(folder, tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch_jobs, "draw", lambda *args, **kwargs: pytest.fail("nothing may be drawn"))
    (folder / "in" / "text.png").write_text("not a picture")
    Image.new("RGB", (30, 32), "white").save(folder / "in" / "odd.png")
    Image.new("L", (32, 32), 0).save(folder / "in" / "black.png")
    good = {"prompt": "x", "edit": "in/scene.png"}
    cases = [
        ({**good, "edit": []}, ['"edit" must be a file path or a non-empty list of file paths, got []']),
        ({**good, "edit": ""}, ['"edit" must be a file path or a non-empty list']),
        ({**good, "edit": ["in/scene.png", 3]}, ['"edit" must be a file path or a non-empty list']),
        ({**good, "edit": "in/nope.png"}, ['"edit"', "nope.png", "no such file"]),
        ({**good, "edit": ["in/scene.png", "in/text.png"]}, ['"edit"[1]', "is not an image PIL can read"]),
        ({**good, "image_cfg": 0.5}, ['"image_cfg" must be a finite number >= 1', "got 0.5"]),
        ({**good, "image_cfg": "2"}, ['"image_cfg" must be a finite number >= 1', 'got "2"']),
        ({**good, "image_cfg": True}, ['"image_cfg" must be a finite number >= 1', "got true"]),
        ({"prompt": "x", "image_cfg": 1.5}, ['"image_cfg" needs "edit"']),
        ({**good, "image": "in/scene.png"}, ['"edit" and "image" cannot be combined']),
        ({**good, "strength": 0.5}, ['"edit" and "strength" cannot be combined']),
        ({**good, "mask": "in/small.png"}, ['"mask" is 16x16 pixels but the first "edit" picture is 32x32']),
        ({**good, "mask": "in/black.png"}, ["\"mask\" 'in/black.png' selects no token to redraw"]),
        ({**good, "mask": "in/left.png", "size": 16}, ['"size" does not apply to an edit line with a "mask"']),
        ({**good, "mask": "in/left.png", "steps": 40}, ['"steps" 40: num_iter must be an integer in [1, 32]']),
        ({**good, "edit": "in/odd.png", "mask": "in/odd.png"}, ["30x32 pixels", "multiples of 4"]),
    ]
    jobs, out = folder / "bad.jsonl", tmp_path / "out"
    for entry, expected in cases:
        write_jobs(jobs, good, entry)  # the bad line is line 2
        code, err = call(capsys, "generate", "--prompts", jobs, "--outdir", out, "--model", tiny_dir)
        assert code == 2 and len(err) == 1, (entry, err)
        assert err[0].startswith(f"harmon generate: error: {jobs} line 2: "), (entry, err[0])
        assert all(words in err[0] for words in expected), (entry, expected, err[0])
        assert not out.exists()
