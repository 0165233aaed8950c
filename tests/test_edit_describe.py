"""`edit_mode="describe"` (issue 25): the model answers the instruction about its pictures with its understanding path
(greedy, as a question is answered) and draws that text. Checked on the tiny random model: the descriptions are the
chat-formatted answers, the images are text-to-image of them, the stored mode is the default, the pipeline and `harmon
edit` return and record them, and what cannot apply is refused by name."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from harmon_pipelines import HarmonImageEditPipeline
from harmon_pipelines.cli import main
from modeling_harmon.modeling_harmon_settings import HarmonSettingError


FAST = {"num_iter": 2, "num_sampling_steps": 2, "guidance_scale": 2.0}
WORDS = 6  # a short description: the random model never stops by itself


def picture(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8))


@pytest.fixture
def talker(tiny_model, tokenizer, monkeypatch):
    """The tiny model with answers cut at WORDS tokens, and neither end-of-text nor blank tokens (a random model may
    stop at once or write only newlines, which gives no description); restored after the test."""
    blank = [i for i in range(tokenizer.vocab_size) if not tokenizer.decode([i]).strip()]
    monkeypatch.setattr(tiny_model.generation_config, "suppress_tokens", blank + tokenizer.all_special_ids)
    original = type(tiny_model).describe_edits

    def short(self, *args, **kwargs):
        kwargs.setdefault("max_new_tokens", WORDS)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "describe_edits", short)
    return tiny_model


def answers_by_hand(model, processor, instructions, images) -> list[str]:
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
            add_generation_prompt=True,
        )
        for text in instructions
    ]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    output = model.generate(**inputs, max_new_tokens=WORDS, do_sample=False)
    decoded = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in decoded]


def test_describe_draws_the_models_answer_as_text_to_image(talker, tokenizer, processor):
    instructions = ["make the circle blue", "remove the square on the left side"]
    images = [picture(1), picture(2)]
    out = talker.generate_images(
        instructions,
        context_images=[[image] for image in images],
        tokenizer=tokenizer,
        edit_mode="describe",
        generator=[torch.Generator().manual_seed(k) for k in (5, 6)],
        **FAST,
    )
    expected = answers_by_hand(talker, processor, instructions, images)
    assert out.descriptions == expected and all(expected)  # the left-padded batch answers as each prompt alone
    assert answers_by_hand(talker, processor, instructions[1:], images[1:]) == expected[1:]
    drawn = talker.generate_images(
        expected, tokenizer=tokenizer, generator=[torch.Generator().manual_seed(k) for k in (5, 6)], **FAST
    )
    assert torch.equal(out.latents, drawn.latents)
    direct = talker.generate_images(
        instructions,
        context_images=[[image] for image in images],
        tokenizer=tokenizer,
        generator=[torch.Generator().manual_seed(k) for k in (5, 6)],
        **FAST,
    )
    assert direct.descriptions is None and not torch.equal(direct.latents, out.latents)


def test_a_repeated_instruction_about_the_same_picture_is_answered_once(talker, tokenizer, monkeypatch):
    rows = []
    generate = talker.generate

    def counting(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(talker, "generate", counting)
    scene, other = picture(1), picture(2)
    texts = talker.describe_edits(
        ["make it red", "make it red", "swap them", "make it red"],
        [[scene], [scene], [scene], [other]],
        tokenizer=tokenizer,
    )
    assert rows == [3] and texts[0] == texts[1]  # the fourth sees another picture object: asked again
    alone = talker.describe_edits(["swap them", "make it red"], [[scene], [other]], tokenizer=tokenizer)
    assert texts[2:] == alone


def conversation_by_hand(model, processor, turns, image) -> str:
    """The greedy answer to the last question of `turns` ([question, answer, ..., question]), the image with the
    first question."""
    messages = []
    for index, text in enumerate(turns):
        role = "user" if index % 2 == 0 else "assistant"
        content = ([{"type": "image"}] if index == 0 else []) + [{"type": "text", "text": text}]
        messages.append({"role": role, "content": content})
    inputs = processor(
        text=[processor.apply_chat_template(messages, add_generation_prompt=True)], images=[image], return_tensors="pt"
    )
    output = model.generate(**inputs, max_new_tokens=WORDS, do_sample=False)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()


def test_a_stored_reading_prompt_is_asked_first_in_the_same_conversation(talker, tokenizer, processor, monkeypatch):
    instructions, images = ["make the circle blue", "swap them", "make the circle blue"], [picture(1), picture(2)]
    rows, prompts = [], []
    generate = talker.generate

    def counting(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        prompts.append(tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=False))
        return generate(*args, **kwargs)

    monkeypatch.setattr(talker, "generate", counting)
    monkeypatch.setattr(talker.config, "reading_prompt", "describe the image.")
    texts = talker.describe_edits(instructions, [[images[0]], [images[1]], [images[0]]], tokenizer=tokenizer)
    assert rows == [2, 2]  # a reading per picture, then each instruction once
    for text, instruction, image in zip(texts, instructions, [images[0], images[1]]):
        reading = conversation_by_hand(talker, processor, ["describe the image."], image)
        turns = ["describe the image.", reading, instruction]
        assert reading and text == conversation_by_hand(talker, processor, turns, image)
    assert texts[2] == texts[0]
    for asked, instruction in zip(prompts[1], instructions):  # the reading, answered, precedes the instruction
        assert asked.index("describe the image.") < asked.index("<|im_start|>assistant") < asked.index(instruction)
        assert asked.count("<|im_start|>user") == 2 and asked.count("<image>") == prompts[0][0].count("<image>")
    monkeypatch.setattr(talker.config, "reading_prompt", "  ")
    with pytest.raises(ValueError, match="reading_prompt must be None or a non-empty question"):
        talker.config._validate_harmon()


def test_the_stored_mode_is_the_default_and_a_stored_image_scale_does_not_apply(talker, tokenizer, monkeypatch):
    stored = {**talker.generation_config.image_generation, "edit_mode": "describe", "image_guidance_scale": 1.5}
    monkeypatch.setattr(talker.generation_config, "image_generation", stored)
    out = talker.generate_images("make it red", context_images=picture(3), tokenizer=tokenizer, **FAST)
    assert out.descriptions is not None and len(out.descriptions) == 1
    direct = talker.generate_images(
        "make it red", context_images=picture(3), tokenizer=tokenizer, edit_mode="direct", **FAST
    )
    assert direct.descriptions is None


@pytest.mark.parametrize(
    "arguments, field",
    [
        ({"edit_mode": "think"}, "edit_mode"),
        ({"edit_mode": "describe", "image_guidance_scale": 1.5}, "image_guidance_scale"),
    ],
)
def test_what_cannot_apply_is_refused_by_name(talker, tokenizer, arguments, field):
    with pytest.raises(HarmonSettingError) as error:
        talker.generate_images("make it red", context_images=picture(3), tokenizer=tokenizer, **FAST, **arguments)
    assert error.value.field == field and str(error.value).startswith(field)


def test_an_empty_description_is_an_error_naming_the_prompt(tiny_model, tokenizer, monkeypatch):
    def stops_at_once(*args, input_ids=None, **kwargs):  # the first prompt gets a word, the second none
        word = tokenizer("x", add_special_tokens=False)["input_ids"][0]
        return torch.cat([input_ids, torch.tensor([[word], [tokenizer.eos_token_id]])], dim=1)

    monkeypatch.setattr(tiny_model, "generate", stops_at_once)
    with pytest.raises(ValueError, match=r"prompt\[1\] \('swap them'\).*no description.*edit_mode 'direct'"):
        tiny_model.describe_edits(["a", "swap them"], picture(1), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_model.describe_edits("a", picture(1), tokenizer=tokenizer, max_new_tokens=0)


def test_the_edit_pipeline_returns_the_descriptions(talker, tokenizer):
    pipe = HarmonImageEditPipeline(model=talker, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    steps = {"num_inference_steps": 2, "num_sampling_steps": 2}
    out = pipe(
        "make the circle blue",
        image=picture(1),
        edit_mode="describe",
        generator=torch.Generator().manual_seed(0),
        **steps,
    )
    model_out = talker.generate_images(
        "make the circle blue",
        context_images=picture(1),
        tokenizer=tokenizer,
        edit_mode="describe",
        generator=torch.Generator().manual_seed(0),
        num_iter=2,
        num_sampling_steps=2,
    )
    assert out.descriptions == model_out.descriptions
    assert (
        pipe("make it blue", image=picture(1), generator=torch.Generator().manual_seed(0), **steps).descriptions
        is None
    )


def test_harmon_edit_prints_and_records_the_description(talker, tokenizer, tmp_path, capsys):
    folder = tmp_path / "model"
    talker.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    picture(1).save(tmp_path / "scene.png")
    flags = ["--model", str(folder), "--steps", "2", "--head-steps", "1"]
    code = main(
        [
            "edit",
            str(tmp_path / "scene.png"),
            "make it blue",
            "-o",
            str(tmp_path / "out.png"),
            "--edit-mode",
            "describe",
            *flags,
        ]
    )
    out, err = capsys.readouterr()
    assert code in (0, None), err
    metadata = json.loads(Image.open(tmp_path / "out.png").text["harmon"])
    assert metadata["settings"]["edit_mode"] == "describe" and metadata["description"]
    assert out.strip() == f"{tmp_path / 'out.png'}\t{metadata['description']}"
    code = main(
        [
            "edit",
            str(tmp_path / "scene.png"),
            "make it blue",
            "-o",
            str(tmp_path / "x.png"),
            "--edit-mode",
            "describe",
            "--image-cfg",
            "1.5",
            *flags,
        ]
    )
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "--image-cfg 1.5" in err and "--edit-mode describe" in err
    code = main(
        [
            "edit",
            str(tmp_path / "scene.png"),
            "make it blue",
            "-o",
            str(tmp_path / "y.png"),
            "--edit-mode",
            "think",
            *flags,
        ]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "--edit-mode" in err and "describe" in err
    code = main(["eval", "shapes", "--task", "generate", "--edit-mode", "describe", "--model", str(folder)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "--edit-mode applies to --task edit, not --task generate" in err


def test_shapes_eval_scores_the_descriptions_apart_in_describe_mode(talker, tokenizer, monkeypatch):
    from training.shapes import evaluation_edit

    fast = {"num_iter": 2, "num_sampling_steps": 2}
    described = evaluation_edit.evaluate_edit(
        talker, tokenizer, n=6, seed=0, settings={**fast, "edit_mode": "describe"}
    )
    direct = evaluation_edit.evaluate_edit(talker, tokenizer, n=6, seed=0, settings=fast)
    assert described["edit_mode"] == "describe" and direct["edit_mode"] == "direct"
    assert described["description"] == {"value": 0.0, "count": 0, "n": 6, "se": 0.0}  # the random model's ",,,"
    assert "description" not in direct and "description" not in direct["by_operation"]["swap"]
    # A description that is the target's caption counts: the model's answers replaced by the right ones.
    items = evaluation_edit.edit_items(6, 0)
    answers = {edit.instruction: edit.target.caption() for edit, _ in items}
    monkeypatch.setattr(
        type(talker), "describe_edits", lambda self, prompt, *args, **kwargs: [answers[text] for text in prompt]
    )
    right = evaluation_edit.evaluate_edit(talker, tokenizer, n=6, seed=0, settings={**fast, "edit_mode": "describe"})
    assert right["description"]["value"] == 1.0
    assert "reading" not in right  # the model does not read first


def test_shapes_eval_scores_the_reading_of_a_model_that_reads_first(talker, tokenizer, monkeypatch):
    from training.shapes import evaluation, evaluation_edit

    fast = {"num_iter": 2, "num_sampling_steps": 2, "edit_mode": "describe"}
    monkeypatch.setattr(talker.config, "reading_prompt", "describe the image.")
    items = evaluation_edit.edit_items(6, 0)
    misread = {0, 3}  # the answers replaced by the source's caption, but for these items
    asked = []

    def reads(model, processor, questions, **kwargs):
        asked.extend(item.question for item in questions)
        index_of = {source.tobytes(): index for index, (_, source) in enumerate(items)}
        indices = [index_of[item.image.tobytes()] for item in questions]
        return ["two red circles" if index in misread else items[index][0].source.caption() for index in indices]

    monkeypatch.setattr(evaluation_edit, "answer", reads)
    scores = evaluation_edit.evaluate_edit(talker, tokenizer, n=6, seed=0, settings=fast)
    assert asked == ["describe the image."] * 6
    assert scores["reading"] == evaluation.share_with_se([index not in misread for index in range(6)])
    assert scores["by_operation"]["recolor"]["reading"]["value"] == 0.0  # item 0 is a recolour
    assert scores["by_operation"]["move"]["reading"]["value"] == 1.0
