"""ShapesEval: the model-free checker on ground-truth and corrupted renders, the local `evaluate` metrics on
hand-made checks, the evaluation loop on the tiny random model, and `harmon eval shapes`."""

import json
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from harmon_pipelines.cli import main
from modeling_harmon.processing_harmon import HarmonProcessor
from training.shapes import evaluation
from training.shapes.checker import check, detect
from training.shapes.metrics import load_metric
from training.shapes.world import COLORS, SHAPES, Scene, ShapeObject, as_array, questions, render, sample_scene


GENERATION_KEYS = {"overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"}
ATTRIBUTE_KEYS = {"color", "shape", "position", "count"}
QUESTION_TYPES = {"color", "shape", "position", "count", "exists"}
FAST = ["--steps", "2", "--head-steps", "2"]


def ground_truth_scenes(count: int, seed: int = 0) -> list[tuple[Scene, np.ndarray]]:
    """(scene, jittered render) pairs, every kind from both splits."""
    pairs = []
    for index in range(count):
        rng = random.Random(f"{seed}-{index}")
        split = ("train", "held_out")[index % 2]
        scene = sample_scene(rng, split, ("single", "two", "count")[(index // 2) % 3])
        pairs.append((scene, as_array(render(scene, rng))))
    return pairs


def assert_schema(results: dict, n: int) -> None:
    """`results` has exactly the ShapesEval keys, and every score is a fraction (None: nothing to score)."""
    assert set(results) == {"n", "seed", "settings", "seconds_per_image", "hardware", "generation", "vqa"}
    hardware = results["hardware"]
    assert set(hardware) == {"device", "threads", "processor"}
    assert hardware["device"] == "cpu" and hardware["threads"] == torch.get_num_threads()
    assert hardware["processor"] is None or hardware["processor"].strip()
    assert results["n"] == n and results["seconds_per_image"] > 0
    assert {"num_iter", "guidance_scale", "temperature", "num_sampling_steps", "x0_clamp"} <= set(results["settings"])
    generation, vqa = results["generation"], results["vqa"]
    assert set(generation) == GENERATION_KEYS | {"attributes", "held_out"}
    assert set(generation["held_out"]) == GENERATION_KEYS | {"attributes"}
    assert set(generation["attributes"]) == set(generation["held_out"]["attributes"]) == ATTRIBUTE_KEYS
    assert set(vqa) == {"accuracy", "by_type"} and set(vqa["by_type"]) == QUESTION_TYPES
    held = generation["held_out"]
    scores = [generation[key] for key in GENERATION_KEYS] + list(generation["attributes"].values())
    scores += [held[key] for key in GENERATION_KEYS] + list(held["attributes"].values())
    scores += [vqa["accuracy"], *vqa["by_type"].values()]
    assert all(score is None or 0.0 <= score <= 1.0 for score in scores)
    assert generation["overall"] is not None and vqa["accuracy"] is not None


# ---------------------------------------------------------------------------------------------------- checker
def test_checker_accepts_ground_truth_renders():
    right, total = Counter(), Counter()
    for scene, image in ground_truth_scenes(900):
        result = check(scene, image)
        total[scene.kind, scene.held_out] += 1
        right[scene.kind, scene.held_out] += result["overall"]
    assert len(total) == 6 and min(total.values()) == 150
    assert all(right[key] / total[key] >= 0.99 for key in total), {key: right[key] / total[key] for key in total}
    # Without jitter too.
    assert all(check(scene, render(scene))["overall"] for scene, _ in ground_truth_scenes(60, seed=1))


def test_checker_tolerates_blur_and_noise():
    """Generated images are soft and noisy: the checker should judge the drawing, not the sharpness."""
    noise = np.random.default_rng(0)
    right = 0
    for scene, image in ground_truth_scenes(300, seed=3):
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float64)
        noisy = np.clip(blurred + noise.normal(0, 10, blurred.shape), 0, 255).astype(np.uint8)
        right += check(scene, noisy)["overall"]
    assert right / 300 >= 0.98


def test_detect_reads_each_object():
    objects = (ShapeObject("triangle", "purple", "left"), ShapeObject("circle", "yellow", "right"))
    scene = Scene("two", objects, "to the left of")
    found = sorted(detect(render(scene, random.Random(0))), key=lambda obj: obj.centroid[0])
    assert [(obj.color, obj.shape, obj.position) for obj in found] == [
        ("purple", "triangle", "left"),
        ("yellow", "circle", "right"),
    ]
    assert check(scene, render(scene)) == {
        "color": True,
        "shape": True,
        "position": True,
        "count": True,
        "color_attr": True,
        "overall": True,
    }
    # A single scene judges no colour attribution, a count scene no position.
    single_scene = Scene("single", (ShapeObject("square", "red", "top"),))
    single = check(single_scene, render(single_scene))
    assert single["color_attr"] is None and single["overall"]
    pair = (ShapeObject("circle", "blue", "top"), ShapeObject("circle", "blue", "bottom"))
    counted = check(Scene("count", pair), render(Scene("count", pair)))
    assert counted["position"] is None and counted["color_attr"] is None and counted["overall"]


def _other(value: str, choices) -> str:
    return next(choice for choice in choices if choice != value)


OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def _corruptions(scene: Scene) -> dict[str, tuple[Scene, str]]:
    """Wrong drawings of `scene`: name -> (the scene actually drawn, the attribute the checker must reject)."""
    objects = scene.objects
    first = objects[0]
    wrong = {
        "color": (replace(scene, objects=(replace(first, color=_other(first.color, COLORS)), *objects[1:])), "color"),
        "shape": (replace(scene, objects=(replace(first, shape=_other(first.shape, SHAPES)), *objects[1:])), "shape"),
    }
    if scene.kind == "single":
        two = (
            (first, replace(first, position=OPPOSITE[first.position]))
            if first.position in OPPOSITE
            else (replace(first, position="top"), replace(first, position="bottom"))
        )
        wrong["count"] = (replace(scene, objects=two), "count")
        elsewhere = replace(first, position=_other(first.position, ("left", "right")))
        wrong["position"] = (replace(scene, objects=(elsewhere,)), "position")
    elif scene.kind == "two":
        second = objects[1]
        swapped = (replace(first, color=second.color), replace(second, color=first.color))
        wrong["color_attr"] = (replace(scene, objects=swapped), "color_attr")
        moved = (replace(first, position=second.position), replace(second, position=first.position))
        wrong["position"] = (replace(scene, objects=moved), "position")
        wrong["count"] = (replace(scene, objects=(first,)), "count")
    else:
        wrong["count"] = (replace(scene, objects=objects[:1]), "count")
    return wrong


def test_checker_rejects_wrong_images():
    rejected = Counter()
    noise = np.random.default_rng(0)
    for scene, _ in ground_truth_scenes(120, seed=2):
        rng = random.Random(repr(scene))
        for name, (drawn, attribute) in _corruptions(scene).items():
            result = check(scene, render(drawn, rng))
            assert result[attribute] is False and result["overall"] is False, (name, scene, drawn, result)
            rejected[name] += 1
        blank = check(scene, render(Scene(scene.kind, ())))
        assert not any(blank.values()), (scene, blank)
        assert check(scene, noise.integers(0, 256, (32, 32, 3), dtype=np.uint8))["overall"] is False
        # A flat grey (what an untrained model draws) is a background of the wrong colour, not an object.
        assert not any(check(scene, np.full((32, 32, 3), 134, dtype=np.uint8)).values())
    assert set(rejected) == {"color", "shape", "count", "position", "color_attr"}


def test_checker_judges_two_object_position_apart_from_shape():
    # "a blue square above a green triangle", drawn with the wrong shapes: position is judged on the objects that
    # agree best with the wanted ones (here by colour), so only `shape` (and overall) fail, unless the relation does.
    wanted = Scene("two", (ShapeObject("square", "blue", "top"), ShapeObject("triangle", "green", "bottom")), "above")
    circles = tuple(replace(obj, shape="circle") for obj in wanted.objects)
    result = check(wanted, render(replace(wanted, objects=circles)))
    assert result["position"] is True and result["shape"] is False and result["overall"] is False
    flipped = tuple(replace(obj, position=other.position) for obj, other in zip(circles, reversed(circles)))
    assert check(wanted, render(replace(wanted, objects=flipped)))["position"] is False
    # Colours swapped between the shapes: shapes decide the match (GenEval finds objects by class), so the square
    # drawn on top keeps the relation right and only colour attribution fails.
    swapped = (replace(wanted.objects[0], color="green"), replace(wanted.objects[1], color="blue"))
    result = check(wanted, render(replace(wanted, objects=swapped)))
    assert result["position"] is True and result["color_attr"] is False and result["color"] is True


def test_checker_resizes_larger_images():
    scene = Scene("single", (ShapeObject("circle", "green", "bottom"),))
    assert check(scene, render(scene).resize((128, 128)))["overall"]
    with pytest.raises(ValueError, match="uint8"):
        check(scene, np.zeros((32, 32, 3), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------- metrics
def test_generation_metric_arithmetic():
    T, F, N = True, False, None
    rows = [  # kind, held_out, color, shape, position, count, color_attr
        ("single", False, T, T, T, T, N),  # right
        ("single", False, F, T, T, T, N),
        ("single", True, T, T, F, T, N),
        ("two", False, T, T, T, T, T),  # right
        ("two", True, T, T, F, T, F),
        ("count", False, T, T, N, F, N),
        ("count", True, T, T, N, T, N),  # right
    ]
    columns = dict(zip(("kind", "held_out", "color", "shape", "position", "count", "color_attr"), zip(*rows)))
    scores = load_metric("shapes_generation").compute(**{key: list(values) for key, values in columns.items()})
    assert scores == {
        "overall": 3 / 7,
        "single_object": 1 / 3,
        "two_object": 1 / 2,
        "counting": 1 / 2,
        "colors": 2 / 3,
        "position": 3 / 5,
        "color_attr": 1 / 2,
        "attributes": {"color": 6 / 7, "shape": 1.0, "position": 3 / 5, "count": 6 / 7},
        "held_out": {
            "overall": 1 / 3,
            "single_object": 0.0,
            "two_object": 0.0,
            "counting": 1.0,
            "colors": 1.0,
            "position": 0.0,
            "color_attr": 0.0,
            "attributes": {"color": 1.0, "shape": 1.0, "position": 0.0, "count": 1.0},
        },
    }


def test_generation_metric_rejects_malformed_rows():
    metric = load_metric("shapes_generation")
    row = {"kind": ["count"], "held_out": [False], "color": [True], "shape": [True], "count": [True]}
    row["color_attr"] = [None]
    with pytest.raises(ValueError, match="'count' scene needs exactly"):
        metric.compute(**row, position=[True])
    with pytest.raises(ValueError, match="kind"):
        metric.compute(**{**row, "kind": ["three"]}, position=[None])


def test_vqa_metric_normalises_and_groups_by_type():
    scores = load_metric("shapes_vqa").compute(
        predictions=["Red.<|im_end|>", "  two ", "yes", "circle", "LEFT!", "no"],
        references=["red", "two", "no", "circle", "left", "no"],
        question_type=["color", "count", "exists", "shape", "position", "exists"],
    )
    assert scores == {
        "accuracy": 5 / 6,
        "by_type": {"color": 1.0, "shape": 1.0, "position": 1.0, "count": 1.0, "exists": 0.5},
    }
    empty_types = load_metric("shapes_vqa").compute(predictions=["red"], references=["blue"], question_type=["color"])
    assert empty_types == {"accuracy": 0.0, "by_type": {"color": 0.0, **dict.fromkeys(QUESTION_TYPES - {"color"})}}


# ------------------------------------------------------------------------------------------------- evaluation
def test_prompt_and_question_sets_are_fixed_and_balanced():
    scenes = evaluation.prompt_scenes(18, seed=3)
    assert scenes == evaluation.prompt_scenes(18, seed=3) and scenes[:9] == evaluation.prompt_scenes(9, seed=3)
    assert scenes != evaluation.prompt_scenes(18, seed=4)
    assert Counter((scene.kind, scene.held_out) for scene in scenes) == {
        (kind, held): 4 if not held else 2 for kind in ("single", "two", "count") for held in (False, True)
    }
    items = evaluation.vqa_items(20, seed=3)
    assert [item.question_type for item in items] == list(evaluation.QUESTION_TYPES) * 4
    assert [item.answer for item in items if item.question_type == "exists"] == ["yes", "no", "yes", "no"]
    assert not any(item.scene.held_out for item in items)
    # The answer is the ground truth of the rendered scene, as the checker reads it.
    assert all(check(item.scene, item.image)["overall"] for item in items)


def test_ground_truth_and_true_answers_score_one():
    scenes = evaluation.prompt_scenes(18)
    checks = [check(scene, render(scene, random.Random(index))) for index, scene in enumerate(scenes)]
    scores = evaluation.generation_scores(scenes, checks)
    assert scores["overall"] == scores["held_out"]["overall"] == 1.0
    assert all(value == 1.0 for value in scores["attributes"].values())
    items = evaluation.vqa_items(10)
    assert evaluation.vqa_scores(items, [f"{item.answer.upper()}." for item in items])["accuracy"] == 1.0


def test_evaluation_passes_settings_and_one_generator_per_image(tiny_model, tokenizer, monkeypatch):
    calls = []
    original = tiny_model.generate_images

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(tiny_model, "generate_images", spy)
    chosen = {"num_iter": 2, "guidance_scale": 2.0, "temperature": 0.5, "num_sampling_steps": 3, "x0_clamp": 1.5}
    settings = evaluation.generation_settings(tiny_model, **chosen)
    processor = HarmonProcessor.from_model_config(tiny_model.config, tokenizer)
    results = evaluation.evaluate_shapes(
        tiny_model, tokenizer, processor, n=9, seed=5, settings=settings, batch_size=4, progress=False
    )
    assert [len(call["prompt"]) for call in calls] == [4, 4, 1]
    assert [g.initial_seed() for call in calls for g in call["generator"]] == list(range(5, 14))
    for key, value in chosen.items():
        assert all(call[key] == value for call in calls) and results["settings"][key] == value
    assert_schema(results, n=9)
    assert all(value is not None for value in results["vqa"]["by_type"].values())
    assert json.loads(json.dumps(results)) == results
    assert "overall" in evaluation.format_table(results)

    skipped = evaluation.evaluate_shapes(
        tiny_model, tokenizer, processor, n=2, settings=settings, vqa=False, progress=False
    )
    assert skipped["vqa"] is None and skipped["generation"] is not None


# -------------------------------------------------------------------------------------------------------- CLI
def test_harmon_eval_shapes_writes_the_json(tmp_path, capsys):
    out = tmp_path / "results" / "shapes.json"
    code = main(["eval", "shapes", "--n", "4", *FAST, "--batch-size", "3", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    results = json.loads(out.read_text())
    assert_schema(results, n=4)
    assert results["seed"] == 0
    # --steps came from FAST; guidance comes from the packaged model's generation config.
    from harmon_pipelines.default_model import DEFAULT_MODEL_DIR

    shipped = json.loads((DEFAULT_MODEL_DIR / "generation_config.json").read_text())["image_generation"]
    assert results["settings"]["num_iter"] == 2
    assert results["settings"]["guidance_scale"] == shipped["guidance_scale"] == 1.25
    assert "single_object" in printed.out and "exists" in printed.out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps 0: num_iter must be"),
        (["--x0-clamp", "-1"], "--x0-clamp -1.0: x0_clamp must be"),
        (["--skip-vqa", "--skip-generation"], "leaves nothing to evaluate"),
        (["--n", "0"], "argument --n: must be an integer >= 1"),
    ],
)
def test_harmon_eval_errors_are_one_line(argv, message, capsys):
    assert main(["eval", "shapes", *argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("NOTE:")]
    assert len(errors) == 1 and errors[0].startswith("harmon eval shapes: error: ") and message in errors[0], errors


def test_captions_and_questions_use_an_before_vowels():
    rng = random.Random(0)
    texts = []
    for _ in range(300):
        scene = sample_scene(rng, rng.choice(("train", "held_out")))
        texts.append(scene.caption())
        texts.extend(question for _, question, _ in questions(scene, rng))
    joined = " | ".join(texts)
    assert "an orange" in joined and "a red" in joined
    assert "a orange" not in joined and "an red" not in joined


def test_demo_card_states_the_measured_numbers_and_the_commands(tmp_path):
    """The demo model's card reads every number from the recipe's files, and shows the same reproduction commands
    as training/configs/shapes/README.md; the synergy ablation is left to that file's history."""
    from pathlib import Path

    from training.shapes.demo_card import RECIPE_COMMANDS
    from training.shapes.demo_card import main as write_card

    evaluation_json = {
        "n": 36,
        "seed": 0,
        "seconds_per_image": 0.123,
        "hardware": {"device": "cpu", "threads": 2, "processor": "Test CPU @ 2.1GHz"},
        "settings": {"num_iter": 16, "guidance_scale": 1.5, "temperature": 0.1},
        "generation": {
            "overall": 0.8125,
            "single_object": 0.5,
            "two_object": 0.25,
            "counting": 1.0,
            "colors": 0.75,
            "position": 0.625,
            "color_attr": 0.375,
            "attributes": {"color": 0.97, "shape": 0.44},
            "held_out": {"overall": 0.9, "attributes": {"color": 0.9685}},
        },
        "vqa": {"accuracy": 0.875, "by_type": {"shape": 0.66}},
    }
    files = {
        "eval": evaluation_json,
        "timings": {"stage I (3400 steps)": 2160.0, "stage II": 600.0},
    }
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    write_card(
        [
            "--folder",
            str(tmp_path),
            "--eval",
            str(tmp_path / "eval.json"),
            "--timings",
            str(tmp_path / "timings.json"),
            "--note",
            "NOTE",
        ]
    )
    card = (tmp_path / "README.md").read_text()
    for expected in (
        "| 0.81 | 0.50 | 0.25 | 1.00 | 0.75 | 0.62 | 0.38 |",
        "Per attribute: color 0.970, shape 0.440",
        "combinations: overall 0.90; per attribute: color 0.969",
        "accuracy 0.88",
        "shape 0.66",
        "| stage I (3400 steps) | 36.0 min |",
        "| **total** | **46.0 min** |",
        "0.12 s per image on 2 CPU threads (Test CPU @ 2.1GHz).",
        "NOTE",
        RECIPE_COMMANDS,
        "--model runs/shapes/stage3/final",
    ):
        assert expected in card, expected
    assert "ablation" not in card.lower() and "shapes_genonly" not in card
    readme = (Path(__file__).resolve().parent.parent / "training" / "configs" / "shapes" / "README.md").read_text()
    assert RECIPE_COMMANDS in readme
    history = readme.index("## History of the shipped model")
    assert history < readme.index("runs/shapes_genonly") and "--ablation" not in readme
    # The shipped card has the template's static "How to use it" section (a regenerated card keeps it).
    shipped = (Path(__file__).resolve().parent.parent / "pipelines" / "default_model" / "README.md").read_text()
    section = card[card.index("## How to use it") : card.index("## What it scores")]
    assert "harmon generate" in section and "harmon ask" in section and "harmon push" in section
    assert "load_default_model()" in section and section in shipped


def test_shipped_card_is_rendered_from_the_committed_measurements(tmp_path):
    """pipelines/default_model/README.md is exactly what demo_card renders from training/configs/shapes/card_inputs/
    (the evaluation JSONs, timings and status note) and the packaged tokenizer's words: every number on the card has
    a file behind it, and the card can be rendered again on a machine that has none of the runs."""
    import shutil
    from pathlib import Path

    from training.shapes.demo_card import main as write_card

    repo = Path(__file__).resolve().parent.parent
    inputs = repo / "training" / "configs" / "shapes" / "card_inputs"
    shutil.copy(repo / "pipelines" / "default_model" / "tokenizer.json", tmp_path)  # the card lists its words
    note = (inputs / "note.md").read_text().rstrip("\n")  # as the README's "$(cat note.md)" passes it
    write_card(
        [
            "--folder",
            str(tmp_path),
            "--eval",
            str(inputs / "eval.json"),
            "--timings",
            str(inputs / "timings.json"),
            "--canvas",
            str(inputs / "canvas"),
            "--note",
            note,
        ]
    )
    assert (tmp_path / "README.md").read_text() == (repo / "pipelines" / "default_model" / "README.md").read_text()
    # A user reads what the model is first: the opening under the title, status note included, stays short, and the
    # training history lives in training/configs/shapes/README.md.
    card = (tmp_path / "README.md").read_text()
    opening = card[card.index("# Harmon Shapes demo model") : card.index("## How to use it")]
    assert len(opening.split()) < 200 and "ninth" not in opening
    assert "## History of the shipped model" in (repo / "training" / "configs" / "shapes" / "README.md").read_text()
    evaluation = json.loads((inputs / "eval.json").read_text())
    floor = json.loads((repo / "pipelines" / "default_model" / "shapes_floor.json").read_text())
    assert {key: evaluation["settings"][key] for key in floor["settings"]} == floor["settings"]  # same sampling


def test_demo_card_hardware_phrase():
    """The card names the threads and the processor the time was measured on, and guesses nothing that an older
    evaluation file did not record."""
    from training.shapes.demo_card import _hardware

    assert _hardware({"hardware": {"device": "cpu", "threads": 1, "processor": "X"}}) == " on 1 CPU thread (X)"
    assert _hardware({"hardware": {"device": "cpu", "threads": 2}}) == " on 2 CPU threads"
    assert _hardware({"hardware": {"device": "cuda:0", "threads": 2, "processor": None}}) == " on cuda:0"
    assert _hardware({}) == ""


def test_demo_card_puts_the_user_first_and_the_note_in_its_sections(tmp_path):
    """The card reads in a user's order (what it is, how to use it, what it scores, what it cannot do, then the
    recipe and its wall time); the note's status line goes under the opening paragraph and each of its `## Section`
    parts at the end of that section; a note heading that names no section (the removed synergy ablation's too) is
    refused."""
    from training.shapes import world
    from training.shapes.demo_card import render_card

    evaluation = {
        "n": 36,
        "seed": 0,
        "seconds_per_image": 0.1,
        "settings": {"num_iter": 6},
        "generation": {"overall": 0.8125, "single_object": 0.5, "two_object": 0.25},
        "vqa": {"accuracy": 0.875},
    }
    note = "STATUS\n\n## What it scores\n\nSCORES\n\n## Wall time\n\nTIMES"
    card = str(render_card(evaluation, {"stage I": 60.0}, note))
    headings = [line for line in card.splitlines() if line.startswith("#")]
    assert headings == [
        "# Harmon Shapes demo model",
        "## How to use it",
        "## What it scores",
        "## What it cannot do",
        "## Reproduce it",
        "## Wall time",
    ]

    def section(name: str) -> str:
        start = card.index(f"## {name}")
        following = card.find("\n## ", start + 1)
        return card[start : following if following >= 0 else len(card)]

    opening = card[card.index("# Harmon Shapes demo model") : card.index("## How to use it")]
    assert "STATUS" in opening and "from scratch" in opening and f"{world.IMAGE_SIZE} x {world.IMAGE_SIZE}" in opening
    assert section("What it scores").rstrip().endswith("SCORES") and section("Wall time").rstrip().endswith("TIMES")
    assert "harmon generate" in section("How to use it") and "harmon ask" in section("How to use it")
    limits = section("What it cannot do")
    for word in (*world.COLORS, *world.SHAPES, "`<unk>`", f"{world.IMAGE_SIZE} px", "photos"):
        assert word in limits, word
    assert "about 19% of the ShapesEval prompts" in limits
    assert "50% of the one-object ones, 75% of the two-object ones" in limits
    with pytest.raises(ValueError, match="names no section"):
        render_card(evaluation, {}, "STATUS\n\n## Training history\n\nno such section")
    with pytest.raises(ValueError, match="names no section"):
        render_card(evaluation, {}, "STATUS\n\n## Synergy ablation\n\nnot re-run for stage IV")
    assert "## Training history" in str(render_card(evaluation, {}, "```md\n## Training history\n```"))


def _share(count: int, n: int) -> dict:
    """A share as ShapesEval's JSON writes it."""
    value = count / n
    return {"value": value, "count": count, "n": n, "se": round((value * (1 - value) / n) ** 0.5, 4)}


def test_demo_card_scores_editing_and_free_phrasing_from_the_canvas_folder(tmp_path):
    """edit.json and phrasing.json in `--canvas` give the card's "Editing" and "Free phrasing" tables, with the
    measured numbers, after "Starting from a picture" and before the note; a missing file leaves its part out."""
    import shutil
    from pathlib import Path

    from training.shapes.demo_card import main as write_card

    inputs = Path(__file__).resolve().parent.parent / "training" / "configs" / "shapes" / "card_inputs"
    (tmp_path / "eval.json").write_text((inputs / "eval.json").read_text())
    (tmp_path / "timings.json").write_text(json.dumps({"stage IV": 600.0}))
    recolor = {"success": _share(30, 40), "preservation": _share(38, 40), "unchanged": _share(2, 40)}
    move = {"success": _share(10, 40), "preservation": None, "unchanged": _share(20, 40)}
    edit = {
        "n": 80,
        "seed": 0,
        "settings": {"image_guidance_scale": 1.5},
        "trained_tasks": ["t2i", "edit"],
        "edit_warning": None,
        "success": _share(40, 80),
        "preservation": _share(38, 40),
        "unchanged": _share(24, 80),
        "by_operation": {"recolor": recolor, "move": move},
        "by_group": {"seen": recolor, "held_out_combo": move, "held_out_phrasing": move},
        "failed_checks": {"color": 3},
        "seconds_per_item": 0.25,
    }
    phrasing = {
        "n": 180,
        "seed": 0,
        "settings": {},
        "generation": {"canonical": _share(150, 180), "seen": _share(144, 180), "held_out": _share(117, 180)},
        "vqa": {"canonical": _share(171, 180), "seen": _share(162, 180), "held_out": _share(135, 180)},
    }

    def render(files: dict) -> str:
        canvas = tmp_path / "canvas"
        shutil.rmtree(canvas, ignore_errors=True)
        canvas.mkdir()
        shutil.copy(inputs / "canvas" / "outpaint.json", canvas)
        for name, content in files.items():
            (canvas / f"{name}.json").write_text(json.dumps(content))
        arguments = ["--eval", str(tmp_path / "eval.json"), "--timings", str(tmp_path / "timings.json")]
        write_card(
            ["--folder", str(tmp_path), *arguments, "--canvas", str(canvas), "--note", "## What it scores\n\nN"]
        )
        return (tmp_path / "README.md").read_text()

    card = render({"edit": edit, "phrasing": phrasing})
    for row in (
        "| recolor | 0.75 (30/40, SE 0.07) | 0.95 (38/40, SE 0.03) | 0.05 (2/40, SE 0.03) |",
        "| move | 0.25 (10/40, SE 0.07) | – | 0.50 (20/40, SE 0.08) |",
        "| seen instructions | 0.75 (30/40, SE 0.07) |",
        "| held-out instruction phrasings | 0.25 (10/40, SE 0.07) | – |",
        "| **all** | 0.50 (40/80, SE 0.06) | 0.95 (38/40, SE 0.03) | 0.30 (24/80, SE 0.05) |",
        "| text-to-image | 0.83 (150/180, SE 0.03) | 0.80 (144/180, SE 0.03) | 0.65 (117/180, SE 0.04) |",
        "| VQA | 0.95 (171/180, SE 0.02) | 0.90 (162/180, SE 0.02) | 0.75 (135/180, SE 0.03) |",
        "80 instructions of seed 0, the stored sampling settings but `image_guidance_scale=1.5`, 0.25 s per edit",
        'harmon edit IMAGE "make the circle blue" -o out.png',
        "docs/edit.png in the repository",
        "new sentence structures of known words, never trained on",
    ):
        assert row in card, row
    scores = card[card.index("## What it scores") : card.index("## What it cannot do")]
    order = ("Starting from a picture", "Editing (", "Free phrasing (", "\nN\n")
    assert [scores.find(part) for part in order] == sorted(scores.find(part) for part in order), order
    assert "The evaluation recorded" not in card
    warned = render({"edit": {**edit, "edit_warning": "this Harmon model was not trained for instruction editing"}})
    assert "The evaluation recorded: this Harmon model was not trained for instruction editing" in warned
    assert "Free phrasing (" not in warned
    alone = render({"phrasing": phrasing})
    assert "Free phrasing (" in alone and "Editing (" not in alone and "docs/edit.png" not in alone
    bare = render({})
    assert "Starting from a picture" in bare
    assert not any(part in bare for part in ("Editing (", "Free phrasing (", "docs/edit.png", "| **all** |"))


def test_demo_card_lists_the_words_of_the_models_tokenizer(tmp_path):
    """The card's vocabulary is the world's words that the folder's tokenizer.json knows (the chat-template roles
    are not the world's): the stages I-III tokenizer gives the one-wording text, the stage IV one the free-phrasing
    text; without a tokenizer.json, world.extended_vocabulary()'s."""
    from pathlib import Path

    from training.shapes import world
    from training.shapes.demo_card import _limits, tokenizer_words

    def folder_with(words: list[str]) -> Path:
        folder = tmp_path / str(len(words))
        folder.mkdir()
        vocab = {word: index for index, word in enumerate(["<unk>", *words, "?", "user", "assistant"])}
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": vocab}}))
        return folder

    basic = [word for word in world.vocabulary() if word.isalpha()]
    extended = [word for word in world.extended_vocabulary() if word.isalpha()]
    assert tokenizer_words(folder_with(basic)) == basic and tokenizer_words(folder_with(extended)) == extended
    assert tokenizer_words(tmp_path) is None
    evaluation = {"generation": {}, "vqa": {}}
    old, new, default = _limits(evaluation, basic), _limits(evaluation, extended), _limits(evaluation)
    assert f"the world's {len(basic)} words" in old and "`user`" not in old and "`make`" not in old
    assert 'are worded like "a red circle on the left"' in old and "phrasings.py" not in old
    assert f"the world's {len(extended)} words" in new and "`make`" in new and "`swap`" in new
    assert "several wordings of each caption, question and edit instruction" in new and "worded like" not in new
    assert default == new
    for limits in (old, new):
        assert "`harmon generate`, `harmon ask` and `harmon edit` print a one-line warning" in limits
        assert "There is no error" not in limits


def test_make_data_writes_conversations_that_fit_the_stage_configs(tmp_path):
    """Each VQA record asks QUESTIONS_PER_SCENE questions about its scene as one conversation, the image in the first
    turn, and the longest fits the max_length of the stage configs that train on it (a longer one would silently
    lose its last answers)."""
    from pathlib import Path

    import yaml
    from transformers import AutoTokenizer

    from modeling_harmon import HarmonConfig
    from training.data.chat import ChatEncoder
    from training.data.examples import to_messages
    from training.shapes.make_data import QUESTIONS_PER_SCENE, write_data

    write_data(tmp_path / "data", scenes=60, seed=3)
    records = [json.loads(line) for line in (tmp_path / "data" / "vqa.jsonl").read_text().splitlines()]
    turns = [[turn["from"] for turn in record["conversations"]] for record in records]
    assert len(records) == 60 and all(roles == ["human", "gpt"] * QUESTIONS_PER_SCENE for roles in turns)
    assert all(record["conversations"][0]["value"].startswith("<image>\n") for record in records)
    repo = Path(__file__).resolve().parent.parent
    config = HarmonConfig.from_pretrained(repo / "pipelines" / "default_model")  # the world's VAE stride and buffer
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "data" / "tokenizer")
    processor = HarmonProcessor.from_model_config(config, tokenizer, image_size=32)
    encoder = ChatEncoder(processor, config.eos_token_id, 10_000)
    placeholders = config.num_image_placeholders(32, 32)
    longest = max(len(encoder.encode(to_messages(record["conversations"]), placeholders)[0]) for record in records)
    for stage in ("stage2_joint", "stage3_high_quality"):
        stage_config = yaml.safe_load((repo / "training" / "configs" / "shapes" / f"{stage}.yaml").read_text())
        assert longest <= stage_config["data"]["max_length"], (stage, longest)


def test_shapes_stage_configs_train_on_files_make_data_writes(tmp_path):
    """Every file the Shapes stage configs train on is one that make_data writes (a renamed or dropped file would
    otherwise surface only when a stage starts, after the earlier stages' hour)."""
    from pathlib import Path

    import yaml

    from training.shapes.make_data import write_data

    write_data(tmp_path / "data", scenes=8, seed=5)
    write_data(tmp_path / "data_edit", scenes=8, seed=5, free_phrasing=True, edits=4)
    configs = Path(__file__).resolve().parent.parent / "training" / "configs" / "shapes"
    for stage, folder in [(name, "data") for name in ("stage1_alignment", "stage2_joint", "stage3_high_quality")] + [
        ("stage4_edit_phrasing", "data_edit")
    ]:
        for source in yaml.safe_load((configs / f"{stage}.yaml").read_text())["data"]["sources"]:
            assert source["path"].startswith(f"runs/shapes/{folder}/"), source
            assert (tmp_path / folder / Path(source["path"]).name).is_file(), source


def test_demo_card_edit_table_shows_the_descriptions_of_a_describing_model():
    """A model that edits by describing (edit_mode "describe") gets a description column and a sentence saying so; a
    direct one keeps the three columns."""
    from training.shapes.demo_card import _edit_scores

    def share(value):
        return {"value": value, "count": 1, "n": 2, "se": 0.1}

    scores = {"success": share(0.5), "preservation": share(0.5), "unchanged": share(0.0)}
    edit = {"n": 2, "seed": 0, "settings": {}, "seconds_per_item": 0.1, "by_operation": {"move": scores}}
    direct = _edit_scores({**edit, **scores, "edit_mode": "direct"})
    assert "| edit | success | preservation | unchanged |\n|---|---|---|---|\n" in direct
    assert "describing" not in direct
    described = {**scores, "description": share(0.75)}
    text = _edit_scores({**edit, **described, "edit_mode": "describe", "by_operation": {"move": described}})
    assert "| edit | success | preservation | unchanged | description |\n|---|---|---|---|---|\n" in text
    assert (
        "| **all** | 0.50 (1/2, SE 0.10) | 0.50 (1/2, SE 0.10) | 0.00 (1/2, SE 0.10) | 0.75 (1/2, SE 0.10) |" in text
    )
    assert 'edit_mode` is "describe"' in text
