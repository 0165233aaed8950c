"""ShapesEval for inpainting: redraw one object of a two-object scene, keep the other (issue 21).

For each item, a two-object scene is rendered; one of its objects gets another colour or another shape (never the
other object's, and never a held-out colour-shape pair, as the world's training scenes have); the source is masked
over that object's cell and the model inpaints it, prompted with the changed scene's caption. Scores (fractions):

- `success`: the model-free checker reads the changed scene in the output (`checker.check(...)["overall"]`);
- `kept`: the untouched object is still found where it was, with its colour and shape, AND the unmasked region's
  PSNR against the input is at least `KEPT_PSNR_DB` (judged on the raw output, without any paste-back);
- `text_to_image`: the same captions drawn from scratch with the same seeds, the reference the goals are set against
  (inpaint success >= 0.9 x text-to-image success);
- `psnr_unmasked_db`: the mean PSNR of the unmasked region (raw output);
- `success_with_paste_back`, `psnr_unmasked_db_with_paste_back`: the same after putting the source's pixels back
  outside the mask (`HarmonInpaintPipeline`'s default), computed from the same drawings, so the pair measures the
  paste alone.

Why a cell and not the object's exact pixels: a user paints a rough mask, and a cell (the object's box, the
renderer's one-pixel jitter and one more pixel: 16 x 16 around the object's centre) covers it whole while leaving the
other object's cell, and its tokens, untouched.

Run it with `harmon eval shapes --task inpaint [--n N] [--seed S] [--json OUT]`.
"""

import math
import random
import time

import numpy as np
import torch

from .checker import check, detect
from .evaluation import share_with_se
from .world import CENTERS, COLORS, HELD_OUT_PAIRS, OBJECT_SIZE, SHAPES, Scene, ShapeObject, render, sample_scene


KEPT_PSNR_DB = 25.0  # the VAE round trip alone keeps a plain Shapes background well above this
MARGIN = 1  # pixels around the object's box (after the renderer's jitter) that the mask also covers


def inpaint_items(n: int, seed: int = 0) -> list[dict]:
    """`n` items {source scene, target scene, changed object index, changed attribute}, from `seed`."""
    rng = random.Random(seed * 7919 + 21)
    items = []
    while len(items) < n:
        scene = sample_scene(rng, "train", "two")
        index = rng.randrange(2)
        changed, other = scene.objects[index], scene.objects[1 - index]
        attribute = rng.choice(("color", "shape"))
        if attribute == "color":
            choices = [
                c for c in COLORS if c not in (changed.color, other.color) and (c, changed.shape) not in HELD_OUT_PAIRS
            ]
            new = ShapeObject(changed.shape, rng.choice(choices), changed.position)
        else:
            choices = [
                s for s in SHAPES if s not in (changed.shape, other.shape) and (changed.color, s) not in HELD_OUT_PAIRS
            ]
            if not choices:
                continue
            new = ShapeObject(rng.choice(choices), changed.color, changed.position)
        objects = list(scene.objects)
        objects[index] = new
        target = Scene("two", tuple(objects), scene.relation)
        items.append({"source": scene, "target": target, "index": index, "attribute": attribute})
    return items


def object_mask(scene: Scene, index: int, size: int) -> np.ndarray:
    """(size, size) uint8: white over the cell of object `index` (its box plus `MARGIN` pixels)."""
    cx, cy = CENTERS[scene.objects[index].position]
    half = math.ceil(OBJECT_SIZE / 2) + 1 + MARGIN
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half] = 255
    return mask


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    difference = (a.astype(np.float64) - b.astype(np.float64))[where]
    mse = float((difference**2).mean()) if difference.size else 0.0
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def _kept(item: dict, output: np.ndarray, source: np.ndarray, unmasked: np.ndarray) -> tuple[bool, float]:
    other = item["source"].objects[1 - item["index"]]
    found = any(
        (obj.color, obj.shape, obj.position) == (other.color, other.shape, other.position) for obj in detect(output)
    )
    psnr = _psnr(output, source, unmasked)
    return found and psnr >= KEPT_PSNR_DB, psnr


def evaluate_inpaint(
    model,
    tokenizer,
    n: int = 60,
    seed: int = 0,
    settings: dict | None = None,
    reference: bool = True,
) -> dict:
    """Inpainting scores of `model` on `n` items (see the module docstring), with standard errors and counts. Each
    item is drawn once without paste-back (what `kept` must judge); the paste-back scores apply the pipeline's
    overlay to that drawing."""
    from PIL import Image

    from harmon_pipelines import HarmonInpaintPipeline, HarmonPipeline

    settings = dict(settings or {})
    items = inpaint_items(n, seed)
    inpaint = HarmonInpaintPipeline(model=model, tokenizer=tokenizer)
    plain = HarmonPipeline(model=model, tokenizer=tokenizer)
    for pipe in (inpaint, plain):
        pipe.set_progress_bar_config(disable=True)
    success, kept, plain_success, psnrs = [], [], [], []
    pasted_success, pasted_psnrs = [], []
    by_change = {"color": [], "shape": []}
    failed = {}  # checker attribute -> inpainted items where it failed
    started = time.perf_counter()
    for position, item in enumerate(items):
        rng = random.Random(seed * 1_000_003 + position)
        source = render(item["source"], rng)
        mask = object_mask(item["source"], item["index"], source.width)
        prompt = item["target"].caption()
        generator = torch.Generator().manual_seed(seed + position)
        output = inpaint(
            prompt,
            image=source,
            mask_image=Image.fromarray(mask),
            generator=generator,
            paste_back=False,
            **settings,
        ).images[0]
        pasted = np.asarray(inpaint.image_processor.apply_overlay(Image.fromarray(mask), source, output))
        pixels, source_pixels = np.asarray(output), np.asarray(source)
        checked = check(item["target"], pixels)
        success.append(bool(checked["overall"]))
        by_change[item["attribute"]].append(success[-1])
        for name, value in checked.items():
            if value is False and name != "overall":
                failed[name] = failed.get(name, 0) + 1
        is_kept, psnr = _kept(item, pixels, source_pixels, mask == 0)
        kept.append(is_kept)
        psnrs.append(psnr)
        pasted_success.append(bool(check(item["target"], pasted)["overall"]))
        pasted_psnrs.append(_psnr(pasted, source_pixels, mask == 0))
        if reference:  # text-to-image on the same captions: the goals' yardstick (floors skip it)
            drawn = plain(prompt, generator=torch.Generator().manual_seed(seed + position), **settings).images[0]
            plain_success.append(bool(check(item["target"], np.asarray(drawn))["overall"]))
    seconds = (time.perf_counter() - started) / n

    return {
        "n": n,
        "seed": seed,
        "settings": settings,
        "success": share_with_se(success),
        "success_by_change": {name: share_with_se(values) for name, values in by_change.items() if values},
        "failed_checks": dict(sorted(failed.items())),
        "kept": share_with_se(kept),
        "text_to_image": share_with_se(plain_success) if reference else None,
        "psnr_unmasked_db": round(float(np.mean(psnrs)), 2),
        "kept_psnr_threshold_db": KEPT_PSNR_DB,
        "success_with_paste_back": share_with_se(pasted_success),
        "psnr_unmasked_db_with_paste_back": round(float(np.mean(pasted_psnrs)), 2),
        "seconds_per_item": round(seconds, 3),
    }
