"""ShapesEval for variations: redraw a share of a rendered scene's tokens (issue 21).

For each of ShapesEval's prompt scenes, the ground-truth render is varied twice at each strength (two seeds), with
its caption as the prompt. Scores per strength (fractions, with counts and standard errors):

- `preserved`: the model-free checker still reads the source scene in the variation (`check(...)["overall"]`);
- `distinct`: the two variations of a scene differ (some pixel by more than `DISTINCT_LEVELS` / 255);
- `mean_abs_change`: the mean absolute pixel change against the source, in 1/255 steps.

Run it with `harmon eval shapes --task vary [--n N] [--seed S] [--json OUT]`.
"""

import random
import time

import numpy as np
import torch

from .checker import check
from .evaluation import prompt_scenes, share_with_se
from .world import render


STRENGTHS = (0.3, 0.6)
DISTINCT_LEVELS = 8


def evaluate_vary(
    model, tokenizer, n: int = 60, seed: int = 0, strengths=STRENGTHS, settings: dict | None = None
) -> dict:
    """Variation scores of `model` on `n` scenes at each of `strengths` (see the module docstring)."""
    from harmon_pipelines import HarmonInpaintPipeline

    settings = dict(settings or {})
    pipe = HarmonInpaintPipeline(model=model, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    scenes = prompt_scenes(n, seed)
    results = {"n": n, "seed": seed, "settings": settings, "strengths": {}}
    started = time.perf_counter()
    for strength in strengths:
        preserved, distinct, changes = [], [], []
        for position, scene in enumerate(scenes):
            source = render(scene, random.Random(seed * 1_000_003 + position))
            pair = []
            for k in range(2):
                generator = torch.Generator().manual_seed(seed + 2 * position + k)
                image = pipe(scene.caption(), image=source, strength=strength, generator=generator, **settings).images[
                    0
                ]
                pixels = np.asarray(image)
                preserved.append(bool(check(scene, pixels)["overall"]))
                changes.append(float(np.abs(pixels.astype(np.int16) - np.asarray(source, dtype=np.int16)).mean()))
                pair.append(pixels.astype(np.int16))
            distinct.append(bool(np.abs(pair[0] - pair[1]).max() > DISTINCT_LEVELS))
        results["strengths"][str(strength)] = {
            "preserved": share_with_se(preserved),
            "distinct": share_with_se(distinct),
            "mean_abs_change": round(float(np.mean(changes)), 2),
        }
    results["seconds_per_image"] = round((time.perf_counter() - started) / (2 * n * len(strengths)), 3)
    return results
