"""ShapesEval for outpainting: given the half of a two-object scene that holds one object, draw the other half
(issue 21).

Each item is a two-object scene of the world (the second object to the left, right, top or bottom of the first).
The ground-truth render is cut to the half that holds the first object, which is put back on the full 32 px canvas
with the other half to draw (`outpaint_canvas`); the prompt is the whole scene's caption. Scores (fractions, with
counts and standard errors):

- `success`: the checker reads the whole scene in the output: both objects, their colours, and the relation;
- `text_to_image`: the same captions drawn from scratch with the same seeds, which the goal is set against
  (outpainting success >= 0.8 x text-to-image success).

Run it with `harmon eval shapes --task outpaint [--n N] [--seed S] [--json OUT]`.
"""

import random
import time

import numpy as np
import torch

from .checker import check
from .evaluation import share_with_se
from .world import IMAGE_SIZE, render, sample_scene


def outpaint_items(n: int, seed: int = 0) -> list:
    """`n` two-object training-split scenes, from `seed`."""
    rng = random.Random(seed * 7919 + 31)
    return [sample_scene(rng, "train", "two") for _ in range(n)]


def half_and_padding(scene, image):
    """(the half of `image` that holds the scene's first object, padding to draw the rest: {side: pixels})."""
    half = IMAGE_SIZE // 2
    position = scene.objects[0].position
    boxes = {
        "left": ((0, 0, half, IMAGE_SIZE), {"right": half}),
        "right": ((half, 0, IMAGE_SIZE, IMAGE_SIZE), {"left": half}),
        "top": ((0, 0, IMAGE_SIZE, half), {"bottom": half}),
        "bottom": ((0, half, IMAGE_SIZE, IMAGE_SIZE), {"top": half}),
    }
    box, padding = boxes[position]
    return image.crop(box), padding


def evaluate_outpaint(
    model, tokenizer, n: int = 60, seed: int = 0, settings: dict | None = None, reference: bool = True
) -> dict:
    """Outpainting scores of `model` on `n` items (see the module docstring)."""
    from harmon_pipelines import HarmonInpaintPipeline, HarmonPipeline
    from modeling_harmon.modeling_harmon_canvas import outpaint_canvas

    settings = dict(settings or {})
    stride = model.config.vae_stride * model.config.patch_size
    outpaint, plain = (
        HarmonInpaintPipeline(model=model, tokenizer=tokenizer),
        HarmonPipeline(model=model, tokenizer=tokenizer),
    )
    for pipe in (outpaint, plain):
        pipe.set_progress_bar_config(disable=True)
    success, plain_success = [], []
    started = time.perf_counter()
    for position, scene in enumerate(outpaint_items(n, seed)):
        half, padding = half_and_padding(scene, render(scene, random.Random(seed * 1_000_003 + position)))
        canvas, mask = outpaint_canvas(half, stride, **padding)
        generator = torch.Generator().manual_seed(seed + position)
        output = outpaint(scene.caption(), image=canvas, mask_image=mask, generator=generator, **settings).images[0]
        success.append(bool(check(scene, np.asarray(output))["overall"]))
        if reference:  # text-to-image on the same captions: the goals' yardstick (floors skip it)
            drawn = plain(
                scene.caption(), generator=torch.Generator().manual_seed(seed + position), **settings
            ).images[0]
            plain_success.append(bool(check(scene, np.asarray(drawn))["overall"]))
    return {
        "n": n,
        "seed": seed,
        "settings": settings,
        "success": share_with_se(success),
        "text_to_image": share_with_se(plain_success) if reference else None,
        "seconds_per_item": round((time.perf_counter() - started) / n, 3),
    }
