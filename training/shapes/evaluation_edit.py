"""ShapesEval for instruction editing and free phrasing (issue 25).

Editing (`harmon eval shapes --task edit [--n N] [--seed S] [--json OUT]`): each item is an edit of edits.py (a
fixed, seeded set: operation i % 6, and by (i // 6) % 4 a seen item, a seen item, a held-out (operation, colour,
shape) combination, a held-out instruction phrasing); the source scene is rendered, and the model draws from the
instruction with the source in view (`generate_images(instruction, context_images=[source])`, image i with
`torch.Generator().manual_seed(seed + i)`). Scores (fractions with count and standard error):

- `success`: the model-free checker reads the TARGET scene from the output (`checker.check(target, ...)["overall"]`);
- `preservation`: every object the instruction does not touch (the other object of a recolour or reshape, the
  existing one of an add, the one that stays in a remove) is found in the output with its colour, shape and
  position; only items with such an object count (moves and swaps touch every object);
- `unchanged`: the checker still reads the SOURCE scene (no edit made, a copy): the failure a model that only
  reconstructs its input shows;
- `description` (edit_mode "describe" only): the model's text of the edit is the target's canonical caption (either
  order of two objects: `Scene.caption` or `picture_caption`), so a
  failure can be told apart as reading/reasoning (a wrong text) or drawing (a right text drawn wrong);
- `reading` (a model that reads first, `config.reading_prompt`): its answer to that question about the source is
  the source's canonical caption, so a wrong description can be told apart as misread or misrewritten;
- each by operation, and for seen items, held-out combinations and held-out phrasings apart.

Free phrasing (`harmon eval shapes --task phrasing`, [`evaluate_phrasing`]): text-to-image and VQA with the
canonical wording, a seen (train, non-canonical) rewording and a held-out one of the same scene or question, same
seeds, so the three differ in wording alone; the seen and held-out scores also by phrasing name.
"""

import random
import time
import warnings

import numpy as np
import torch

from .checker import check, detect
from .edits import OPERATIONS, Edit, render_edit, sample_edit
from .evaluation import KINDS, VQAItem, answer, generation_settings, share_with_se, vqa_items, vqa_scores
from .phrasings import CANONICAL, caption_phrasings, question_phrasings
from .world import sample_scene


# Item i's split, by (i // len(OPERATIONS)) % 4: half seen, a quarter of each held-out kind.
SPLIT_CYCLE = ("train", "train", "held_out_combo", "held_out_phrasing")
GROUPS = ("seen", "held_out_combo", "held_out_phrasing")
# Longest reading of a source: a two-object caption is 9-10 words.
READING_TOKENS = 24


def edit_items(n: int, seed: int = 0) -> list[tuple[Edit, object]]:
    """`n` (edit, rendered source) pairs; item i depends on (`seed`, i) only, so a larger `n` extends a smaller one."""
    items = []
    for index in range(n):
        rng = random.Random(f"shapes-eval-edit-{seed}-{index}")
        split = SPLIT_CYCLE[(index // len(OPERATIONS)) % len(SPLIT_CYCLE)]
        edit = sample_edit(rng, split, OPERATIONS[index % len(OPERATIONS)])
        items.append((edit, render_edit(edit, rng)[0]))
    return items


def group(edit: Edit) -> str:
    """The GROUPS entry an item is reported under."""
    if edit.held_out_combo:
        return "held_out_combo"
    return "held_out_phrasing" if edit.held_out_phrasing else "seen"


def preserved(edit: Edit, output) -> bool | None:
    """Whether every object `edit` does not touch is found in `output` as it was; None when it touches all."""
    if not edit.kept:
        return None
    found = {(obj.color, obj.shape, obj.position) for obj in detect(output)}
    return all((obj.color, obj.shape, obj.position) in found for obj in edit.kept)


def _scores(rows: list[dict]) -> dict:
    """success / preservation / unchanged shares (None where nothing to score) of `rows`."""

    def share(key: str) -> dict | None:
        values = [row[key] for row in rows if row[key] is not None]
        return share_with_se(values) if values else None

    scores = {"success": share("success"), "preservation": share("preservation"), "unchanged": share("unchanged")}
    for key in ("description", "reading"):
        if any(row.get(key) is not None for row in rows):
            scores[key] = share(key)
    return scores


def _to_pixels(images: torch.Tensor) -> list[np.ndarray]:
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


def edit_images(model, tokenizer, prompts, sources, seeds, settings: dict, batch_size: int = 16) -> list[np.ndarray]:
    """(H, W, 3) uint8 edits: image i from `prompts[i]` with `sources[i]` in view, its own generator `seeds[i]`."""
    return edit_outputs(model, tokenizer, prompts, sources, seeds, settings, batch_size)[0]


def edit_outputs(model, tokenizer, prompts, sources, seeds, settings: dict, batch_size: int = 16):
    """[`edit_images`] and, with edit_mode "describe", the model's description of each edit (else None)."""
    images, descriptions = [], []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        output = model.generate_images(
            prompt=list(prompts[start:end]),
            context_images=[[source] for source in sources[start:end]],
            generator=[torch.Generator().manual_seed(seed) for seed in seeds[start:end]],
            tokenizer=tokenizer,
            **settings,
        )
        images.extend(_to_pixels(output.images))
        descriptions.extend(output.descriptions or [None] * (end - start))
    return images, (descriptions if any(text is not None for text in descriptions) else None)


def _readings(model, tokenizer, sources) -> list[str] | None:
    """The model's answer to its `config.reading_prompt` about each source (the first turn of its describe
    step, asked again: greedy, so the same text), or None for a model that does not read first."""
    question = getattr(model.config, "reading_prompt", None)
    if not question:
        return None
    processor = model._prompt_processor(tokenizer)  # the processor describe_edits formats its turns with
    items = [VQAItem(None, source, "edit", question, "") for source in sources]
    return answer(model, processor, items, max_new_tokens=READING_TOKENS, progress=False)


def evaluate_edit(model, tokenizer, n: int = 60, seed: int = 0, settings: dict | None = None, batch_size: int = 16):
    """Editing scores of `model` on `n` items (see the module docstring). `settings`: image-generation settings
    passed to `generate_images` (e.g. `guidance_scale`, `image_guidance_scale`, `num_iter`); the rest are the
    model's."""
    from modeling_harmon.pipeline_harmon_edit import edit_training_warning

    settings = dict(settings or {})
    given = {key: value for key, value in settings.items() if key != "sampling"}
    mode = model.image_generation_settings(settings.get("sampling"), **given).edit_mode
    items = edit_items(n, seed)
    started = time.perf_counter()
    with warnings.catch_warnings():  # the model's own untrained-for-editing note is in the results instead
        warnings.simplefilter("ignore", UserWarning)
        outputs, descriptions = edit_outputs(
            model,
            tokenizer,
            [edit.instruction for edit, _ in items],
            [source for _, source in items],
            [seed + index for index in range(n)],
            settings,
            batch_size,
        )
    seconds = (time.perf_counter() - started) / n
    readings = _readings(model, tokenizer, [source for _, source in items]) if mode == "describe" else None
    rows, failed = [], {}
    for index, ((edit, _), output) in enumerate(zip(items, outputs, strict=True)):
        checked = check(edit.target, output)
        for name, value in checked.items():
            if value is False and name != "overall":
                failed[name] = failed.get(name, 0) + 1
        rows.append(
            {
                "operation": edit.operation,
                "group": group(edit),
                "success": bool(checked["overall"]),
                "preservation": preserved(edit, output),
                "unchanged": bool(check(edit.source, output)["overall"]),
                # describe: whether the model's text is the target's canonical caption (what it then draws)
                "description": None
                if descriptions is None
                else descriptions[index] in (edit.target.caption(), edit.target.picture_caption()),
                "reading": None
                if readings is None
                else readings[index] in (edit.source.caption(), edit.source.picture_caption()),
            }
        )
    return {
        "n": n,
        "seed": seed,
        "settings": settings,
        "edit_mode": mode,
        "trained_tasks": getattr(model.config, "trained_tasks", None),  # None: the config does not say
        "edit_warning": edit_training_warning(model.config),  # the model says it was not trained to edit
        **_scores(rows),
        "by_operation": {op: _scores([row for row in rows if row["operation"] == op]) for op in OPERATIONS},
        "by_group": {name: _scores([row for row in rows if row["group"] == name]) for name in GROUPS},
        "failed_checks": dict(sorted(failed.items())),
        "seconds_per_item": round(seconds, 3),
    }


def phrasing_items(n: int, seed: int = 0) -> list[dict]:
    """`n` generation items {scene, canonical, seen, held_out, seen_name, held_out_name}: scene i has kind KINDS[i %
    3] (training-split colour-shape pairs); its seen and held-out wordings are drawn from (`seed`, i)."""
    items = []
    for index in range(n):
        rng = random.Random(f"shapes-eval-phrasing-{seed}-{index}")
        scene = sample_scene(rng, "train", KINDS[index % len(KINDS)])
        seen = {name: text for name, text in caption_phrasings(scene, "train").items() if name != CANONICAL}
        held = caption_phrasings(scene, "held_out")
        seen_name, held_name = rng.choice(sorted(seen)), rng.choice(sorted(held))
        items.append(
            {
                "scene": scene,
                "canonical": scene.caption(),
                "seen": seen[seen_name],
                "held_out": held[held_name],
                "seen_name": seen_name,
                "held_out_name": held_name,
            }
        )
    return items


def reworded_vqa_items(n: int, seed: int = 0) -> dict[str, list[VQAItem]]:
    """ShapesEval's `n` VQA items (`evaluation.vqa_items`) with their canonical questions, and the same images and
    answers with a seen and a held-out rewording of each question."""
    return named_vqa_rewordings(n, seed)[0]


def named_vqa_rewordings(n: int, seed: int = 0) -> tuple[dict[str, list[VQAItem]], dict[str, list[str]]]:
    """[`reworded_vqa_items`] and, for "seen" and "held_out", the phrasing name of each item's question (the names
    of `phrasings.question_phrasings`), so scores can be broken down by wording. Draws as it always did: the name
    lists are the question lists it chose from, in the same order."""
    items = vqa_items(n, seed)
    worded = {"canonical": items, "seen": [], "held_out": []}
    names = {"seen": [], "held_out": []}
    for index, item in enumerate(items):
        rng = random.Random(f"shapes-eval-phrasing-vqa-{seed}-{index}")
        seen = {name: text for name, text in question_phrasings(item.question, "train").items() if name != CANONICAL}
        held = question_phrasings(item.question, "held_out")
        for key, choices in (("seen", seen), ("held_out", held)):
            name = rng.choice(list(choices))
            names[key].append(name)
            worded[key].append(VQAItem(item.scene, item.image, item.question_type, choices[name], item.answer))
    return worded, names


def _exact_matches(asked: list[VQAItem], answers: list[str]) -> int:
    """How many `answers` the `shapes_vqa` metric counts right (its exact match, as ShapesEval scores it)."""
    return round(vqa_scores(asked, answers)["accuracy"] * len(asked))


def _by_name(names: dict[str, list[str]], score) -> dict[str, dict]:
    """{phrasing name: share}: `score(split, indices)` -> (right, total) for the items of each name; seen names
    first, each split's names sorted (caption and question names of the two splits differ)."""
    shares = {}
    for split in ("seen", "held_out"):
        indices = {}
        for index, name in enumerate(names[split]):
            indices.setdefault(name, []).append(index)
        for name in sorted(indices):
            right, total = score(split, indices[name])
            shares[name] = share_with_se([True] * right + [False] * (total - right))
    return shares


def evaluate_phrasing(
    model, tokenizer, processor, n: int = 180, seed: int = 0, settings: dict | None = None, batch_size: int = 16
) -> dict:
    """Text-to-image success (checker `overall`) and VQA exact match for the canonical, a seen and a held-out wording
    of the same `n` scenes (image i drawn with seed + i in all three) and `n` questions; each a share with SE.
    `by_phrasing` splits the seen and held-out shares by phrasing name, to tell one weak wording from a general
    failure to generalise."""
    from .evaluation import generate

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}.")
    settings = generation_settings(model) if settings is None else settings
    items = phrasing_items(n, seed)
    seeds = [seed + index for index in range(n)]
    results = {"n": n, "seed": seed, "settings": settings, "generation": {}, "vqa": {}}
    correct = {}
    for key in ("canonical", "seen", "held_out"):
        images = generate(model, tokenizer, [item[key] for item in items], seeds, settings, batch_size, False)
        correct[key] = [
            bool(check(item["scene"], image)["overall"]) for item, image in zip(items, images, strict=True)
        ]
        results["generation"][key] = share_with_se(correct[key])
    worded, names = named_vqa_rewordings(n, seed)
    answers = {}
    for key, asked in worded.items():
        answers[key] = answer(model, processor, asked, batch_size, progress=False)
        right = _exact_matches(asked, answers[key])
        results["vqa"][key] = share_with_se([True] * right + [False] * (len(asked) - right))

    def generation_score(split: str, indices: list[int]) -> tuple[int, int]:
        return sum(correct[split][index] for index in indices), len(indices)

    def vqa_score(split: str, indices: list[int]) -> tuple[int, int]:
        asked = [worded[split][index] for index in indices]
        return _exact_matches(asked, [answers[split][index] for index in indices]), len(indices)

    item_names = {split: [item[f"{split}_name"] for item in items] for split in ("seen", "held_out")}
    results["by_phrasing"] = {
        "generation": _by_name(item_names, generation_score),
        "vqa": _by_name(names, vqa_score),
    }
    return results
