"""ShapesEval: a small GenEval for the Shapes world. A model draws a fixed, seeded set of prompts, the model-free
checker (checker.py) judges every image, and the model answers questions about ground-truth renders; the local
`evaluate` modules of metrics/ turn both into scores (fractions in [0, 1]).

    results = evaluate_shapes(model, tokenizer, processor, n=180, seed=0)
    print(format_table(results))

The prompt set depends on `n` and `seed` only, and image i is drawn with `torch.Generator().manual_seed(seed + i)`,
so two models (or two settings) are compared on the same prompts and noise.
"""

import math
import platform
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .checker import ATTRIBUTES, check
from .metrics import load_metric
from .world import Scene, questions, render, sample_scene


KINDS = ("single", "two", "count")
QUESTION_TYPES = ("color", "shape", "position", "count", "exists")
# Answers are one word; a byte-level tokenizer needs up to 8 tokens for the longest ("triangle").
MAX_NEW_TOKENS = 10


@dataclass(frozen=True)
class VQAItem:
    """A question about a ground-truth render: `image` shows `scene`; `question_type` is one of QUESTION_TYPES."""

    scene: Scene
    image: Image.Image
    question_type: str
    question: str
    answer: str


def prompt_scenes(n: int, seed: int = 0) -> list[Scene]:
    """The generation prompts: scene i has kind KINDS[i % 3], and a held-out (colour, shape) pair when i % 9 is 3, 4
    or 5, so every 9 consecutive scenes hold each kind from both splits and a third of the set is held out. Scene i
    depends on (`seed`, i) only, so a larger `n` extends a smaller one."""
    scenes = []
    for index in range(n):
        rng = random.Random(f"shapes-eval-generation-{seed}-{index}")
        split = "held_out" if 3 <= index % 9 < 6 else "train"
        scenes.append(sample_scene(rng, split, KINDS[index % len(KINDS)]))
    return scenes


def vqa_items(n: int, seed: int = 0) -> list[VQAItem]:
    """`n` questions about jittered renders of training-split scenes: question i has type QUESTION_TYPES[i % 5];
    "exists" questions alternate between answers "yes" and "no" (a model that always says yes scores a half)."""
    items = []
    for index in range(n):
        rng = random.Random(f"shapes-eval-vqa-{seed}-{index}")
        wanted = QUESTION_TYPES[index % len(QUESTION_TYPES)]
        answer = ("yes", "no")[(index // len(QUESTION_TYPES)) % 2] if wanted == "exists" else None
        while True:  # not every scene has every type (a centred single object has no "what shape is ..." question)
            scene = sample_scene(rng, "train")
            options = [item for item in questions(scene, rng) if item[0] == wanted and answer in (None, item[2])]
            if options:
                break
        question_type, question, reference = rng.choice(options)
        items.append(VQAItem(scene, render(scene, rng), question_type, question, reference))
    return items


def processor_name(device: torch.device) -> str | None:
    """The name of the chip that `device` runs on (the CPU's model name from /proc/cpuinfo on Linux, else what
    `platform` knows; the GPU's name), or None when the system does not say."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def generation_settings(
    model,
    num_iter: int | None = None,
    guidance_scale: float | None = None,
    temperature: float | None = None,
    num_sampling_steps: int | None = None,
    x0_clamp: float | None = None,
    cfg_schedule: str | None = None,
    sampling: str | None = None,
    candidates: int | None = None,
) -> dict:
    """Every image-generation setting ShapesEval passes to `model.generate_images`, resolved and validated by the
    model's settings object (a bad value raises `HarmonSettingError` naming its `field`). A setting not given is the
    model's own (`generation_config.image_generation`, or its sampling preset `sampling`), so ShapesEval measures a model as it draws
    for its users."""
    return model.resolve_image_generation_settings(
        sampling,
        num_iter=num_iter,
        guidance_scale=guidance_scale,
        temperature=temperature,
        num_sampling_steps=num_sampling_steps,
        x0_clamp=x0_clamp,
        cfg_schedule=cfg_schedule,
        candidates=candidates,
    )


def generate(
    model, tokenizer, prompts: list[str], seeds: list[int], settings: dict, batch_size: int = 16, progress: bool = True
) -> list[np.ndarray]:
    """(H, W, 3) uint8 images, image i drawn from `prompts[i]` with its own generator seeded `seeds[i]`, in batches
    of `batch_size` prompts, with `settings` from [`generation_settings`]."""
    images = []
    with tqdm(total=len(prompts), desc="ShapesEval generation", unit="image", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            generators = [torch.Generator().manual_seed(seed) for seed in seeds[start : start + batch_size]]
            output = model.generate_images(
                prompt=prompts[start : start + batch_size], generator=generators, tokenizer=tokenizer, **settings
            )
            # As HarmonPipeline turns images into pixels.
            pixels = ((output.images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            images.extend(pixels.permute(0, 2, 3, 1).cpu().numpy())
            bar.update(len(generators))
    return images


def answer(
    model,
    processor,
    items: list[VQAItem],
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = True,
) -> list[str]:
    """The model's greedy answer to each item's question about its image (the processor's chat template, as
    `harmon ask` asks)."""
    answers = []
    with tqdm(total=len(items), desc="ShapesEval VQA", unit="question", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            texts = [
                processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}],
                    add_generation_prompt=True,
                )
                for item in batch
            ]
            inputs = processor(images=[item.image for item in batch], text=texts, return_tensors="pt").to(model.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            answers.extend(text.strip() for text in processor.batch_decode(output[:, inputs["input_ids"].shape[1] :]))
            bar.update(len(batch))
    return answers


def share_with_se(values: list[bool]) -> dict:
    """The share of True in `values` with its count and binomial standard error (the image-conditioned tasks'
    scores)."""
    p = sum(values) / len(values)
    return {
        "value": round(p, 4),
        "count": sum(values),
        "n": len(values),
        "se": round(math.sqrt(p * (1 - p) / len(values)), 4),
    }


def generation_scores(scenes: list[Scene], checks: list[dict]) -> dict:
    """The `shapes_generation` metric of `checks` (from `checker.check`, one per scene)."""
    columns = {key: [result[key] for result in checks] for key in ATTRIBUTES}
    kinds, held_out = [scene.kind for scene in scenes], [scene.held_out for scene in scenes]
    return load_metric("shapes_generation").compute(kind=kinds, held_out=held_out, **columns)


def vqa_scores(items: list[VQAItem], answers: list[str]) -> dict:
    """The `shapes_vqa` metric of `answers` (one per item)."""
    references, types = [item.answer for item in items], [item.question_type for item in items]
    return load_metric("shapes_vqa").compute(predictions=answers, references=references, question_type=types)


def evaluate_shapes(
    model,
    tokenizer,
    processor,
    n: int = 180,
    seed: int = 0,
    settings: dict | None = None,
    batch_size: int = 16,
    generation: bool = True,
    vqa: bool = True,
    progress: bool = True,
) -> dict:
    """ShapesEval of `model`: `n` generation prompts and `n` VQA questions.

    Args:
        model, tokenizer: the Harmon and its tokenizer; processor: its `HarmonProcessor` (for VQA).
        n: number of prompts, and of questions. seed: picks the prompts and questions; image i's noise is seeded
            `seed + i`.
        settings: from [`generation_settings`] (default: its defaults). batch_size: prompts (questions) per call.
        generation, vqa: `False` skips that half (its entry is then None).

    Returns:
        {"n", "seed", "settings", "seconds_per_image", "hardware", "generation", "vqa"}: `generation` as the
        `shapes_generation` metric returns it, `vqa` as `shapes_vqa` does; `settings` holds every sampling setting
        (the image-generation ones and VQA's greedy `max_new_tokens`); `seconds_per_image` is the wall time of
        drawing (not checking) an image, on `hardware` = {"device", "threads", "processor"} (torch's intra-op
        threads and the processor's name: a CPU time means little without them; a stage I step of the Shapes recipe
        took 0.72 s on one 2-core machine and 1.8 s on another).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}.")
    settings = generation_settings(model) if settings is None else settings
    results = {
        "n": n,
        "seed": seed,
        "settings": {**settings, "max_new_tokens": MAX_NEW_TOKENS},
        "seconds_per_image": None,
        "hardware": {
            "device": str(model.device),
            "threads": torch.get_num_threads(),
            "processor": processor_name(model.device),
        },
        "generation": None,
        "vqa": None,
    }
    if generation:
        scenes = prompt_scenes(n, seed)
        prompts = [scene.caption() for scene in scenes]
        started = time.perf_counter()
        images = generate(model, tokenizer, prompts, [seed + i for i in range(n)], settings, batch_size, progress)
        results["seconds_per_image"] = (time.perf_counter() - started) / n
        checks = [check(scene, image) for scene, image in zip(scenes, images, strict=True)]
        results["generation"] = generation_scores(scenes, checks)
    if vqa:
        items = vqa_items(n, seed)
        results["vqa"] = vqa_scores(items, answer(model, processor, items, batch_size, progress=progress))
    return results


def _cell(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.3f}"


def format_table(results: dict) -> str:
    """`results` of [`evaluate_shapes`] as a text table (- for a score with nothing to score)."""
    lines = [f"ShapesEval  n={results['n']}  seed={results['seed']}"]
    generation = results["generation"]
    if generation is not None:
        seconds = results.get("seconds_per_image")
        timing = "" if seconds is None else f" ({seconds:.3f} s/image)"
        lines.append(f"generation{timing}   all  held-out")
        held = generation["held_out"]
        for key in ("overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"):
            lines.append(f"  {key:<22}{_cell(generation[key])}  {_cell(held[key])}")
        for key, value in generation["attributes"].items():
            lines.append(f"  {'attribute ' + key:<22}{_cell(value)}  {_cell(held['attributes'][key])}")
    if results["vqa"] is not None:
        lines.append("vqa (exact match)")
        lines.append(f"  {'accuracy':<22}{_cell(results['vqa']['accuracy'])}")
        for key, value in results["vqa"]["by_type"].items():
            lines.append(f"  {key:<22}{_cell(value)}")
    return "\n".join(lines)
