"""`prompt_mode="describe"`: the model restates a text prompt through its understanding path
(`describe_prompts`), then draws the restatement; the model, the diffusers pipeline and the settings agree."""

import pytest
import torch

from harmon_pipelines import HarmonPipeline
from modeling_harmon.modeling_harmon_settings import HarmonSettingError


SETTINGS = {"num_iter": 2, "num_sampling_steps": 3, "guidance_scale": 1.0}


def _draw(model, tokenizer, prompts, **kwargs):
    generator = [torch.Generator().manual_seed(index) for index in range(len(prompts))]
    return model.generate_images(prompt=prompts, tokenizer=tokenizer, generator=generator, **SETTINGS, **kwargs)


def test_describe_draws_the_model_s_restatement(tiny_model, tokenizer, monkeypatch):
    asked = []

    def restate(prompt, tokenizer=None, processor=None, max_new_tokens=64, allow_empty=False):
        asked.append(list(prompt))
        return [f"{text} again" for text in prompt]

    monkeypatch.setattr(tiny_model, "describe_prompts", restate)
    described = _draw(tiny_model, tokenizer, ["a red circle", "two squares"], prompt_mode="describe")
    direct = _draw(tiny_model, tokenizer, ["a red circle again", "two squares again"], prompt_mode="direct")
    assert asked == [["a red circle", "two squares"]]
    assert described.descriptions == ["a red circle again", "two squares again"]
    assert torch.equal(described.images, direct.images)
    assert direct.descriptions is None


def test_the_pipeline_draws_the_restatement_too(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setattr(tiny_model, "describe_prompts", lambda prompt, **_: [f"{text} again" for text in prompt])
    pipe = HarmonPipeline(model=tiny_model, tokenizer=tokenizer)
    arguments = {"num_inference_steps": 2, "num_sampling_steps": 3, "guidance_scale": 1.0, "output_type": "pt"}
    described = pipe(
        ["a red circle"], generator=[torch.Generator().manual_seed(0)], prompt_mode="describe", **arguments
    )
    direct = pipe(["a red circle again"], generator=[torch.Generator().manual_seed(0)], **arguments)
    assert torch.equal(described.images, direct.images)
    assert described.descriptions == ["a red circle again"] and direct.descriptions is None


def test_describe_prompts_asks_the_understanding_path_without_images(tiny_model, tokenizer):
    try:
        answers = tiny_model.describe_prompts(
            ["a red circle", "a red circle", "a cat"], tokenizer=tokenizer, max_new_tokens=3
        )
    except ValueError as error:  # a random model may stop at once; then the error says what to do
        assert "prompt_mode 'direct'" in str(error)
        return
    assert len(answers) == 3 and answers[0] == answers[1] and all(isinstance(text, str) for text in answers)


def test_refusals_name_the_argument(tiny_model, tokenizer):
    with pytest.raises(HarmonSettingError, match="prompt_mode must be one of 'direct', 'describe'"):
        _draw(tiny_model, tokenizer, ["a red circle"], prompt_mode="rewrite")
    ids, mask = tiny_model.tokenize_generation_prompts(["a red circle"], tokenizer=tokenizer)
    with pytest.raises(HarmonSettingError, match="prompt_mode 'describe' restates the prompt text"):
        tiny_model.generate_images(input_ids=ids, attention_mask=mask, prompt_mode="describe", **SETTINGS)
    with pytest.raises(ValueError, match="prompt must be a string or a non-empty list of strings"):
        tiny_model.describe_prompts([], tokenizer=tokenizer)


def test_nothing_restated_means_no_descriptions(tiny_model, tokenizer, monkeypatch):
    """A restatement equal to the prompt (or "auto" with nothing to restate) draws the prompt and reports nothing."""
    monkeypatch.setattr(tiny_model, "describe_prompts", lambda prompt, **_: list(prompt))
    assert _draw(tiny_model, tokenizer, ["a red circle"], prompt_mode="describe").descriptions is None
    pipe = HarmonPipeline(model=tiny_model, tokenizer=tokenizer)
    output = pipe("a red circle", num_inference_steps=2, num_sampling_steps=3, prompt_mode="auto", output_type="pt")
    assert output.descriptions is None
