"""Issue 25, the world side: Shapes edits with ground-truth targets, free phrasing with held-out wordings, the
unknown-word warning, `harmon eval shapes --task edit`, and make_data's flagged additions (the plain data unchanged)."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmon_pipelines.cli import main
from training.shapes import edits, phrasings, world
from training.shapes.checker import check, detect
from training.shapes.edits import HELD_OUT_COMBOS, INSTRUCTIONS, OPERATIONS, render_edit, sample_edit
from training.shapes.evaluation_edit import evaluate_edit, evaluate_phrasing, preserved
from training.shapes.make_data import EDIT_KEYS, EDIT_READING_PROMPT, build_tokenizer, write_data


FAST = {"num_sampling_steps": 2, "num_iter": 2}
# Digest of `make_data --scenes 20 --seed 0` (captions.jsonl, vqa.jsonl, image pixels, tokenizer vocabulary) as the
# code before issue 25 wrote it: the shipped model's data must come out the same with the new flags off.
PLAIN_DATA_DIGEST = "b9689265da5ee6fffb3b993c826eeca4c4edf7dfed0a981cea6ee43c0f66795e"


def _edits(count: int, split: str, seed: int = 0):
    rng = random.Random(f"test-edits-{split}-{seed}")
    return [sample_edit(rng, split, OPERATIONS[index % len(OPERATIONS)]) for index in range(count)]


def _key(obj) -> tuple[str, str, str]:
    return obj.color, obj.shape, obj.position


# ------------------------------------------------------------------------------------------------------- edits
@pytest.mark.parametrize("split", edits.SPLITS)
def test_every_operation_keeps_the_world_rules_and_changes_what_it_says(split):
    for edit in _edits(600, split):
        source, target, op = edit.source, edit.target, edit.operation
        assert world.valid_scene(source) and world.valid_scene(target), edit
        assert not source.held_out and not target.held_out, edit  # world held-out pairs: never in an edit
        assert (edit.held_out_combo, edit.held_out_phrasing) == (
            split == "held_out_combo",
            split == "held_out_phrasing",
        )
        assert set(map(_key, edit.kept)) <= set(map(_key, target.objects)), edit  # untouched objects stay
        assert len(edit.origin) == len(target.objects)
        before, after = source.objects, target.objects
        if op in ("recolor", "reshape"):
            changed, same = ("color", "shape") if op == "recolor" else ("shape", "color")
            assert target.kind == source.kind and [o.position for o in before] == [o.position for o in after]
            assert [getattr(o, same) for o in before] == [getattr(o, same) for o in after]
            differs = [getattr(a, changed) != getattr(b, changed) for a, b in zip(before, after)]
            assert sum(differs) == (2 if source.kind == "count" else 1), edit
        elif op == "move":
            assert source.kind == target.kind == "single"
            assert (before[0].color, before[0].shape) == (after[0].color, after[0].shape)
            assert before[0].position != after[0].position
        elif op == "add":
            assert source.kind == "single" and target.kind in ("two", "count") and len(after) == 2
            added = [obj for obj in after if _key(obj) != _key(before[0])]
            assert len(added) == 1 and added[0].position == world.OPPOSITE[before[0].position]
        elif op == "remove":
            assert source.kind in ("two", "count") and target.kind == "single"
            assert _key(after[0]) in set(map(_key, before)) and edit.kept == after
        else:
            assert op == "swap" and source.kind == target.kind == "two"
            assert [(o.color, o.shape, o.position) for o in after] == [
                (a.color, a.shape, b.position) for a, b in zip(before, reversed(before))
            ]
        assert edit.instruction.strip() and "{" not in edit.instruction


def test_held_out_combinations_and_phrasings_never_appear_in_the_train_split():
    train = _edits(3000, "train")
    assert {edit.operation for edit in train} == set(OPERATIONS)
    assert not any(subject in HELD_OUT_COMBOS for edit in train for subject in edit.subjects)
    assert not any(edit.held_out_combo or edit.held_out_phrasing for edit in train)
    held_phrasings = {edit.instruction for edit in _edits(3000, "held_out_phrasing")}
    assert not held_phrasings & {edit.instruction for edit in train}
    combos = _edits(600, "held_out_combo")
    assert all(any(subject in HELD_OUT_COMBOS for subject in edit.subjects) for edit in combos)
    # Every held-out combination is reachable, and none is a world held-out pair.
    assert {subject for edit in combos for subject in edit.subjects} >= HELD_OUT_COMBOS
    assert not {(color, shape) for _, color, shape in HELD_OUT_COMBOS} & world.HELD_OUT_PAIRS
    # Each operation has several train phrasings, and its held-out ones are new structures, not new words.
    references = edits.REFERENCES + edits.PLURAL_REFERENCES + edits.ONE_OF_TWO_REFERENCES + edits.SAME_AGAIN
    train_templates = [t for op in INSTRUCTIONS.values() for t in op["train"]] + list(references)
    train_words = set(world.vocabulary()).union(*(phrasings.template_words(t) for t in train_templates))
    for op, templates in INSTRUCTIONS.items():
        assert len(templates["train"]) >= 4 and templates["held_out"], op
        assert not set(templates["train"]) & set(templates["held_out"]), op
        for template in templates["held_out"]:
            assert phrasings.template_words(template) <= train_words, template


def test_rendered_edits_pass_the_checker_and_keep_untouched_objects_on_their_pixels():
    for index, edit in enumerate(_edits(240, "train", seed=1) + _edits(60, "held_out_combo", seed=1)):
        rng = random.Random(index)
        source, target = render_edit(edit, rng)
        assert check(edit.source, source)["overall"], edit
        assert check(edit.target, target)["overall"], edit
        assert preserved(edit, np.asarray(target)) in (True, None)
        for obj in edit.kept:  # the same jitter: found at the same centroid in both
            found = [[d.centroid for d in detect(image) if _key(d) == _key(obj)] for image in (source, target)]
            assert found[0] and found[0] == found[1], (edit, found)
    # Without a rng, the plain renders.
    edit = _edits(1, "train")[0]
    assert [
        np.array_equal(world.as_array(a), world.as_array(world.render(b)))
        for a, b in zip(render_edit(edit), (edit.source, edit.target))
    ] == [True, True]


def test_sample_edit_refuses_unknown_splits_and_operations():
    with pytest.raises(ValueError, match="split"):
        sample_edit(random.Random(0), "held_out")
    with pytest.raises(ValueError, match="operation"):
        sample_edit(random.Random(0), "train", "rotate")


# ------------------------------------------------------------------------------------------------ phrasing
def _scenes(count: int):
    rng = random.Random("test-phrasing")
    return [
        world.sample_scene(rng, ("train", "held_out")[i % 2], ("single", "two", "count")[i % 3]) for i in range(count)
    ]


def test_phrasings_keep_the_canonical_caption_and_hold_out_new_structures_of_known_words():
    seen_names, held_texts, train_texts = set(), set(), set()
    for scene in _scenes(300):
        train = phrasings.caption_phrasings(scene, "train")
        held = phrasings.caption_phrasings(scene, "held_out")
        assert train[phrasings.CANONICAL] == scene.caption()  # ShapesEval's prompts stay as they were
        assert len(train) >= 5 and len(held) >= 2 and not set(train.values()) & set(held.values())
        seen_names |= set(train)
        train_texts |= set(train.values())
        held_texts |= set(held.values())
        for _, question, _ in world.questions(scene, random.Random(0)):
            asked = phrasings.question_phrasings(question, "train")
            assert asked[phrasings.CANONICAL] == question and len(asked) >= 3
            assert not set(asked.values()) & set(phrasings.question_phrasings(question, "held_out").values())
    assert not held_texts & train_texts
    assert {"next_to", "and_positions", "that_is", "ordinal", "pair", "on_top_of", "under"} <= seen_names
    # The example is a train phrasing.
    example = "a blue square on the left and a green triangle on the right"
    pair = world.Scene(
        "two",
        (world.ShapeObject("square", "blue", "left"), world.ShapeObject("triangle", "green", "right")),
        "to the left of",
    )
    assert phrasings.caption_phrasings(pair)["and_positions"] == example
    # Held-out wordings use only words the train wordings use.
    train_words = set().union(*(phrasings.words(text) for text in train_texts))
    for kind in phrasings.CAPTIONS.values():
        for _, template, _ in kind["held_out"]:
            assert phrasings.template_words(template) <= train_words, template
    question_train = set().union(
        *(phrasings.template_words(t) for _, train, _ in phrasings.QUESTIONS.values() for t in train)
    )
    question_train |= train_words
    for _, _, held in phrasings.QUESTIONS.values():
        for template in held:
            assert phrasings.template_words(template) <= question_train, template
    # phrase_caption: about half canonical in the train split; never canonical in the held-out one.
    rng = random.Random(0)
    names = [phrasings.phrase_caption(scene, rng)[0] for scene in _scenes(300)]
    assert 0.4 < names.count(phrasings.CANONICAL) / len(names) < 0.6
    assert phrasings.CANONICAL not in {phrasings.phrase_caption(s, rng, "held_out")[0] for s in _scenes(60)}
    with pytest.raises(ValueError, match="canonical question"):
        phrasings.question_type("what is this?")


def test_extended_vocabulary_covers_every_phrasing_and_keeps_the_shipped_ids():
    plain, extended = build_tokenizer(), build_tokenizer(extended=True)
    assert len(world.vocabulary()) == 48  # unchanged: the shipped tokenizer and the card's word count
    assert world.extended_vocabulary()[:48] == world.vocabulary()
    old, new = plain.get_vocab(), extended.get_vocab()
    assert len(new) > len(old) and all(new[word] == index for word, index in old.items())
    for name in ("and", "make", "move", "remove", "change", "next", "that"):  # the missing words
        assert name in new and name not in old
    rng = random.Random(3)
    texts = []
    for scene in _scenes(300):
        for split in phrasings.SPLITS:
            texts += phrasings.caption_phrasings(scene, split).values()
            for _, question, _ in world.questions(scene, rng):
                texts += phrasings.question_phrasings(question, split).values()
    texts += [edit.instruction for split in edits.SPLITS for edit in _edits(600, split, seed=2)]
    unknown = {word for text in texts for word in phrasings.unknown_words(text, extended)}
    assert not unknown
    assert phrasings.unknown_words("a red circle above a blue square", plain) == []


# -------------------------------------------------------------------------------------------- unknown words
def test_unknown_words_names_each_word_outside_a_word_level_vocabulary(tokenizer):
    plain = build_tokenizer()
    text = "Make the circle blue, AND the square next to it; and, again, make it red."
    assert phrasings.unknown_words(text, plain) == ["Make", "AND", "next", "it", "and", "again", "make"]
    message = phrasings.unknown_words_message("a circle and a square", plain)
    assert message.startswith("unknown words 'and'") and "<unk>" in message and "\n" not in message
    assert phrasings.unknown_words_message("a red circle on the left", plain) is None
    assert phrasings.unknown_words(text, tokenizer) == []  # byte-level: no unknown token, so no unknown words


def test_generate_and_ask_warn_about_unknown_words_in_one_line(tmp_path, capsys):
    out = tmp_path / "out.png"
    prompt = "a blue ball on the right and a green triangle next to it"
    assert main(["generate", prompt, "-o", str(out), "--steps", "2", "--head-steps", "2"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == [
        "harmon generate: warning: unknown words 'ball': not in the model's vocabulary, so it reads each as <unk>; "
        "the result may ignore them"
    ]
    # "and", "next" and "it" are words the drawing never learned: the model (prompt_mode "auto") restated the prompt,
    # and the command prints what it drew after the file name
    path, _, drawn = captured.out.strip().splitlines()[-1].partition("\t")
    assert path == str(out) and drawn and drawn != prompt
    assert main(["ask", str(out), "what color is the square?"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["ask", str(out), "which colour is the square?"]) == 0
    err = capsys.readouterr().err
    assert "harmon ask: warning: unknown words 'colour':" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- evaluations
def _assert_share(score) -> None:
    assert set(score) == {"value", "count", "n", "se"} and 0 <= score["value"] <= 1 and score["n"] >= 1


def test_edit_evaluation_runs_on_the_tiny_model(tiny_model, tokenizer):
    results = evaluate_edit(tiny_model, tokenizer, n=3, seed=0, settings=FAST)
    assert {"n", "seed", "settings", "success", "preservation", "unchanged", "by_operation", "by_group"} <= set(
        results
    )
    assert results["n"] == 3 and results["settings"] == FAST and results["seconds_per_item"] > 0
    assert set(results["failed_checks"]) <= {"color", "shape", "position", "count", "color_attr"}
    _assert_share(results["success"])
    _assert_share(results["unchanged"])
    assert results["success"]["n"] == 3
    assert set(results["by_operation"]) == set(OPERATIONS)
    assert (
        results["by_operation"]["recolor"]["success"]["n"] == 1 and results["by_operation"]["swap"]["success"] is None
    )
    assert set(results["by_group"]) == {"seen", "held_out_combo", "held_out_phrasing"}
    assert json.loads(json.dumps(results)) == results


def test_edit_items_are_fixed_and_cover_every_group():
    from training.shapes.evaluation_edit import edit_items, group

    items = edit_items(24, seed=2)
    again = edit_items(12, seed=2)
    assert [edit for edit, _ in items[:12]] == [edit for edit, _ in again]
    groups = [group(edit) for edit, _ in items]
    assert groups.count("seen") == 12 and groups.count("held_out_combo") == groups.count("held_out_phrasing") == 6
    assert [edit.operation for edit, _ in items[:6]] == list(OPERATIONS)
    assert all(check(edit.source, np.asarray(source))["overall"] for edit, source in items)


def test_phrasing_evaluation_runs_on_the_tiny_model(tiny_model, tokenizer):
    from modeling_harmon.processing_harmon import HarmonProcessor
    from training.shapes.evaluation import generation_settings

    processor = HarmonProcessor.from_model_config(tiny_model.config, tokenizer)
    settings = generation_settings(tiny_model, num_iter=2, num_sampling_steps=2)
    results = evaluate_phrasing(tiny_model, tokenizer, processor, n=3, settings=settings)
    for part in ("generation", "vqa"):
        assert set(results[part]) == {"canonical", "seen", "held_out"}
        for score in results[part].values():
            _assert_share(score)
        _assert_by_phrasing_adds_up(results, part)


def _phrasing_names() -> dict[str, set[str]]:
    """Every caption and question phrasing name of phrasings.py, by split (the canonical one left out)."""
    names = {split: set() for split in phrasings.SPLITS}
    for kind in phrasings.CAPTIONS.values():
        for split, entries in kind.items():
            names[split] |= {name for name, _, _ in entries if name != phrasings.CANONICAL}
    for kind, (_, train, held_out) in phrasings.QUESTIONS.items():
        for split, templates in (("train", train), ("held_out", held_out)):
            names[split] |= {f"{kind}_{split}_{index}" for index in range(len(templates))}
    return names


def _assert_by_phrasing_adds_up(results: dict, part: str) -> None:
    """The by-name shares of `part` are shares whose counts and sizes sum to the seen and held-out ones."""
    by_name = results["by_phrasing"][part]
    for score in by_name.values():
        _assert_share(score)
    reworded = [results[part]["seen"], results[part]["held_out"]]
    assert sum(score["n"] for score in by_name.values()) == sum(score["n"] for score in reworded) == 2 * results["n"]
    assert sum(score["count"] for score in by_name.values()) == sum(score["count"] for score in reworded)


def test_named_vqa_rewordings_draw_what_reworded_vqa_items_always_drew():
    from training.shapes.evaluation import vqa_items
    from training.shapes.evaluation_edit import named_vqa_rewordings, reworded_vqa_items

    worded, names = named_vqa_rewordings(25, seed=4)
    assert reworded_vqa_items(25, seed=4) == worded
    # The draw as it was before names were kept: a choice among the question texts.
    for index, item in enumerate(vqa_items(25, seed=4)):
        rng = random.Random(f"shapes-eval-phrasing-vqa-4-{index}")
        train = phrasings.question_phrasings(item.question, "train")
        held = phrasings.question_phrasings(item.question, "held_out")
        seen = [text for name, text in train.items() if name != phrasings.CANONICAL]
        assert worded["seen"][index].question == rng.choice(seen) == train[names["seen"][index]]
        assert worded["held_out"][index].question == rng.choice(list(held.values())) == held[names["held_out"][index]]
        assert worded["canonical"][index] == item


def test_harmon_eval_shapes_task_phrasing_writes_every_wording_by_phrasing_name(tmp_path, capsys):
    out = tmp_path / "phrasing.json"
    argv = ["eval", "shapes", "--task", "phrasing", "--n", "3", "--steps", "2", "--head-steps", "2"]
    code = main([*argv, "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    results = json.loads(out.read_text())
    assert results["n"] == 3 and results["seed"] == 0
    # The model's own settings under the flags, as `--task generate` resolves them.
    assert results["settings"]["num_iter"] == 2 and results["settings"]["num_sampling_steps"] == 2
    assert results["settings"]["guidance_scale"] == 1.25  # the shipped model's
    known = _phrasing_names()
    assert not known["train"] & known["held_out"]  # by_phrasing is keyed by name alone: no name in both splits
    for part in ("generation", "vqa"):
        assert set(results[part]) == {"canonical", "seen", "held_out"}
        for score in results[part].values():
            _assert_share(score)
            assert score["n"] == 3
        _assert_by_phrasing_adds_up(results, part)
        assert set(results["by_phrasing"][part]) <= known["train"] | known["held_out"]
    # Scene i's names, and question i's, are the ones phrasing_items and named_vqa_rewordings record.
    from training.shapes.evaluation_edit import named_vqa_rewordings, phrasing_items

    items, (_, asked) = phrasing_items(3), named_vqa_rewordings(3)
    caption_names = {item[f"{split}_name"] for item in items for split in ("seen", "held_out")}
    assert set(results["by_phrasing"]["generation"]) == caption_names
    assert set(results["by_phrasing"]["vqa"]) == set(asked["seen"] + asked["held_out"])
    assert set(asked["held_out"]) <= known["held_out"] and set(asked["seen"]) <= known["train"]
    assert {item["held_out_name"] for item in items} <= known["held_out"]
    assert len(printed.out.splitlines()) == 8  # 2 tasks x 3 wordings, and 2 gaps


def test_harmon_eval_shapes_task_phrasing_prints_the_numbers_it_writes(tmp_path, capsys, monkeypatch):
    from training.shapes.evaluation import share_with_se

    def share(count: int, n: int = 9) -> dict:
        return share_with_se([True] * count + [False] * (n - count))

    calls = []

    def fake(model, tokenizer, processor, n, seed, settings, batch_size):
        calls.append({"n": n, "seed": seed, "settings": settings, "batch_size": batch_size})
        return {
            "n": n,
            "seed": seed,
            "settings": settings,
            "generation": {"canonical": share(7), "seen": share(5), "held_out": share(2)},
            "vqa": {"canonical": share(8), "seen": share(6), "held_out": share(4)},
            "by_phrasing": {"generation": {"pair": share(1, 2)}, "vqa": {"count_train_0": share(2, 3)}},
        }

    monkeypatch.setattr("harmon_training.shapes.evaluation_edit.evaluate_phrasing", fake)
    out = tmp_path / "deep" / "phrasing.json"
    argv = ["eval", "shapes", "--task", "phrasing", "--n", "9", "--seed", "5", "--batch-size", "4", "--cfg", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    results = json.loads(out.read_text())
    assert calls[0]["n"] == 9 and calls[0]["seed"] == 5 and calls[0]["batch_size"] == 4
    assert calls[0]["settings"]["guidance_scale"] == 2.0 and results["settings"] == calls[0]["settings"]
    assert results["by_phrasing"]["vqa"] == {"count_train_0": share(2, 3)}
    expected = []
    for part in ("generation", "vqa"):
        for wording in ("canonical", "seen", "held_out"):
            score = results[part][wording]
            expected.append(
                f"{part + ' ' + wording:22} {score['value']:.3f} ({score['count']}/9, SE {score['se']:.3f})"
            )
    assert printed[:6] == expected
    assert printed[0] == "generation canonical   0.778 (7/9, SE 0.139)"
    assert printed[6].split() == ["generation", "seen", "-", "held_out", "+0.333"]
    assert printed[7].split() == ["vqa", "seen", "-", "held_out", "+0.222"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "0"], "argument --n: must be an integer >= 1"),
        (["--skip-vqa"], "--task phrasing scores generation and VQA together"),
        (["--steps", "0"], "--steps 0: num_iter must be"),
    ],
)
def test_harmon_eval_shapes_task_phrasing_errors_are_one_line(argv, message, capsys):
    assert main(["eval", "shapes", "--task", "phrasing", *argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("NOTE:")]
    assert len(errors) == 1 and errors[0].startswith("harmon eval shapes: error: ") and message in errors[0], errors


def test_harmon_eval_shapes_help_names_the_phrasing_task(capsys):
    assert main(["eval", "shapes", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "phrasing}" in text and "phrasing: text-to-image and VQA with the canonical, a seen and a held-out" in text


def test_harmon_eval_shapes_task_edit_prints_and_writes_the_scores(tmp_path, capsys):
    out = tmp_path / "edit.json"
    code = main(
        ["eval", "shapes", "--task", "edit", "--n", "3", "--steps", "2", "--head-steps", "2", "--json", str(out)]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    results = json.loads(out.read_text())
    assert results["n"] == 3 and results["settings"] == {"num_inference_steps": 2, "num_sampling_steps": 2}
    from harmon_pipelines.default_model import DEFAULT_MODEL_DIR
    from modeling_harmon import HarmonConfig
    from modeling_harmon.pipeline_harmon_edit import edit_training_warning

    config = HarmonConfig.from_pretrained(DEFAULT_MODEL_DIR)
    assert results["trained_tasks"] == config.trained_tasks
    assert results["edit_warning"] == edit_training_warning(config)
    if results["edit_warning"] is not None:  # the shipped model before it learns to edit
        assert f"harmon eval shapes: warning: {results['edit_warning']}" in printed.err.splitlines()
    assert "all success" in printed.out and "recolor success" in printed.out and "unchanged" in printed.out


# ------------------------------------------------------------------------------------------------ make_data
def _digest(folder: Path) -> str:
    """Captions, questions, image pixels and tokenizer vocabulary (pixels, not PNG bytes: zlib may change)."""
    from transformers import AutoTokenizer

    digest = hashlib.sha256()
    for name in ("captions.jsonl", "vqa.jsonl"):
        digest.update((folder / name).read_bytes())
    for path in sorted((folder / "images").iterdir()):
        digest.update(path.name.encode())
        digest.update(np.asarray(Image.open(path).convert("RGB")).tobytes())
    vocabulary = AutoTokenizer.from_pretrained(folder / "tokenizer").get_vocab()
    digest.update(json.dumps(sorted(vocabulary.items())).encode())
    return digest.hexdigest()


def test_make_data_without_the_flags_writes_the_data_it_always_wrote(tmp_path):
    write_data(tmp_path / "plain", scenes=20, seed=0)
    assert _digest(tmp_path / "plain") == PLAIN_DATA_DIGEST
    assert not (tmp_path / "plain" / "edits.jsonl").exists()


def test_make_data_flags_reword_the_same_scenes_and_write_edit_records(tmp_path):
    write_data(tmp_path / "plain", scenes=30, seed=1)
    write_data(tmp_path / "free", scenes=30, seed=1, free_phrasing=True, edits=12)
    plain, free = tmp_path / "plain", tmp_path / "free"
    for name in sorted(path.name for path in (plain / "images").iterdir()):  # same scenes, same pixels
        assert (plain / "images" / name).read_bytes() == (free / "images" / name).read_bytes()
    captions = [
        [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()] for folder in (plain, free)
    ]
    assert [record["image"] for record in captions[0]] == [record["image"] for record in captions[1]]
    assert sum(a["text"] != b["text"] for a, b in zip(*captions)) >= 5
    vqa = [[json.loads(line) for line in (folder / "vqa.jsonl").read_text().splitlines()] for folder in (plain, free)]
    answers = [
        [turn["value"] for record in records for turn in record["conversations"] if turn["from"] == "gpt"]
        for records in vqa
    ]
    assert answers[0] == answers[1]  # reworded questions, the same answers
    records = [json.loads(line) for line in (free / "edits.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(set(record) == {*EDIT_KEYS, "operation"} for record in records)
    assert EDIT_KEYS == ("source", "instruction", "target")
    for record in records:
        for key in ("source", "target"):
            assert not Path(record[key]).is_absolute() and (free / record[key]).is_file()
        assert Image.open(free / record["source"]).size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(free / "tokenizer")
    assert len(tokenizer.get_vocab()) == len(build_tokenizer(extended=True).get_vocab())
    texts = [record["instruction"] for record in records] + [record["text"] for record in captions[1]]
    assert not any(phrasings.unknown_words(text, tokenizer) for text in texts)
    assert main_make_data(["--output", str(tmp_path / "bad"), "--edits", "-1"]) == 2


def test_make_data_writes_distill_records_whose_teacher_is_the_canonical_caption(tmp_path):
    """distill_phrasing.jsonl: each caption record's image and wording, taught to condition as the plain data's
    (canonical) caption does. distill_edits.jsonl: each edit as instruction + source -> target's caption; a dropped
    instruction draws the source as its caption; both dropped is unconditional, in EDIT_DISTILL_DROPOUT's shares."""
    import random

    from training.shapes.edits import sample_edit
    from training.shapes.make_data import EDIT_DISTILL_DROPOUT, edit_distill_record

    write_data(tmp_path / "plain", scenes=30, seed=1)
    write_data(tmp_path / "free", scenes=30, seed=1, free_phrasing=True, edits=12)
    plain, free = tmp_path / "plain", tmp_path / "free"

    def read(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    phrasing = read(free / "distill_phrasing.jsonl")
    canonical, worded = read(plain / "captions.jsonl"), read(free / "captions.jsonl")
    assert [(r["target"], r["prompt"], r["teacher_prompt"], r["sources"]) for r in phrasing] == [
        (w["image"], w["text"], c["text"], []) for w, c in zip(worded, canonical, strict=True)
    ]
    # prompt_rewrites.jsonl: the same pairs as text conversations (a `text` source), wording -> canonical caption
    rewrites = read(free / "prompt_rewrites.jsonl")
    assert rewrites == [
        {"messages": [{"from": "human", "value": w["text"]}, {"from": "gpt", "value": c["text"]}]}
        for w, c in zip(worded, canonical, strict=True)
    ]
    assert any(w["text"] != c["text"] for w, c in zip(worded, canonical))
    assert not (plain / "prompt_rewrites.jsonl").exists()
    edits, distill = read(free / "edits.jsonl"), read(free / "distill_edits.jsonl")
    assert len(distill) == len(edits) == 12
    for edit, record in zip(edits, distill):
        if record["prompt"] is not None:
            assert (record["prompt"], record["sources"], record["target"]) == (
                edit["instruction"],
                [edit["source"]],
                edit["target"],
            )
        elif record["sources"]:
            assert record["target"] == edit["source"] and record["teacher_prompt"]
        else:
            assert record["teacher_prompt"] is None
    rng, draws = random.Random(0), random.Random(1)
    edit = sample_edit(rng, "train")
    kinds = []
    for _ in range(20000):
        record = edit_distill_record(edit, "s.png", "t.png", draws)
        kinds.append("both" if not record["sources"] else "instruction" if record["prompt"] is None else "keep")
        expected = {"both": None, "instruction": edit.source.caption(), "keep": edit.target.caption()}[kinds[-1]]
        assert record["teacher_prompt"] == expected
    assert abs(kinds.count("instruction") / 20000 - EDIT_DISTILL_DROPOUT[0]) < 0.01
    assert abs(kinds.count("both") / 20000 - EDIT_DISTILL_DROPOUT[1]) < 0.01


def test_make_data_writes_edit_descriptions_and_readings_answered_by_the_targets_caption(tmp_path):
    """edit_descriptions.jsonl (stage IV of edit_mode "describe"): one LLaVA record per edit, the source picture and
    the instruction answered by the target scene's canonical caption, readable as a `vqa` source."""
    import random

    from training.data.sources import SourceSpec, load_source
    from training.shapes.edits import render_edit, sample_edit

    write_data(tmp_path / "free", scenes=10, seed=1, free_phrasing=True, edits=12)
    folder = tmp_path / "free"
    edits = [json.loads(line) for line in (folder / "edits.jsonl").read_text().splitlines()]
    source = load_source(SourceSpec(kind="vqa", format="jsonl", path=str(folder / "edit_descriptions.jsonl")))
    records = [source[index] for index in range(len(source))]
    read_first = load_source(SourceSpec(kind="vqa", format="jsonl", path=str(folder / "edit_readings.jsonl")))
    readings = [read_first[index] for index in range(len(read_first))]
    assert len(records) == len(readings) == len(edits) == 12
    rng = random.Random("shapes-edits-1")  # write_edit_records' draws, replayed: the edits themselves
    for edit, record, reading in zip(edits, records, readings, strict=True):
        expected = sample_edit(rng, "train")
        render_edit(expected, rng)
        assert expected.instruction == edit["instruction"]
        assert Path(record["image"]) == Path(reading["image"]) == folder / edit["source"]
        assert [turn["value"] for turn in record["messages"]] == [
            f"<image>\n{edit['instruction']}",
            expected.target.picture_caption(),
        ]
        # edit_readings.jsonl: the source's caption asked and answered first, then the same instruction
        assert [turn["value"] for turn in reading["messages"]] == [
            f"<image>\n{EDIT_READING_PROMPT}",
            expected.source.picture_caption(),
            edit["instruction"],
            expected.target.picture_caption(),
        ]


def test_a_pictures_caption_names_two_objects_in_reading_order():
    """`Scene.picture_caption`: the same picture gets the same caption whichever object the scene lists first (left
    before right, top before bottom); one object, or two alike, keep `caption()`."""
    import random

    from training.shapes.world import Scene, ShapeObject, sample_scene

    red, blue = ShapeObject("circle", "red", "left"), ShapeObject("square", "blue", "right")
    first = Scene("two", (red, blue), "to the left of")
    second = Scene("two", (blue, red), "to the right of")
    assert first.picture_caption() == second.picture_caption() == "a red circle to the left of a blue square"
    assert second.caption() == "a blue square to the right of a red circle"
    top, bottom = ShapeObject("triangle", "green", "bottom"), ShapeObject("circle", "yellow", "top")
    assert Scene("two", (top, bottom), "below").picture_caption() == "a yellow circle above a green triangle"
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng, "train")
        text = scene.picture_caption()
        if scene.kind != "two":
            assert text == scene.caption()
        else:
            assert " to the right of " not in text and " below " not in text


def test_make_data_writes_scene_captions_in_reading_order(tmp_path):
    from PIL import Image

    write_data(tmp_path / "data", scenes=4, seed=2, scene_captions=16)
    records = [json.loads(line) for line in (tmp_path / "data" / "scene_captions.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all(Image.open(tmp_path / "data" / r["image"]).size == (32, 32) for r in records)
    two = [r["text"] for index, r in enumerate(records) if index % 4]
    assert all(" of " in text or " above " in text or " below " in text for text in two)  # two objects, related
    assert not any(" to the right of " in text or " below " in text for text in two)
    again = tmp_path / "again"
    write_data(again, scenes=4, seed=2, scene_captions=16)
    assert (again / "scene_captions.jsonl").read_text() == (tmp_path / "data" / "scene_captions.jsonl").read_text()
    assert main_make_data(["--output", str(tmp_path / "bad"), "--scene-captions", "-1"]) == 2


def main_make_data(argv: list[str]) -> int:
    from training.shapes.make_data import main as make_data

    try:
        make_data(argv)
    except SystemExit as stop:
        return stop.code
    return 0
