"""`candidates` (best of N): each image is drawn N times, one drawing after another from its generator, and the model
keeps the one its understanding path reads as the drawn text most likely (`reading_log_likelihoods`, the answer's
log-likelihood to `config.reading_prompt`). Checked on the tiny random model: the kept image is the best-read of the
drawings made by hand with the same generators, the scores are a padded batch's equal to one row's alone, and what
cannot be ranked is refused by name."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_harmon.modeling_harmon_settings import HarmonSettingError


FAST = {"num_iter": 2, "num_sampling_steps": 2, "guidance_scale": 2.0}
READING = "describe the image."


@pytest.fixture
def reader(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.config, "reading_prompt", READING)
    return tiny_model


def scores_by_hand(model, processor, image: Image.Image, text: str) -> float:
    """One conversation alone (no padding): the summed log-probabilities of the answer and its end-of-turn token."""
    asked = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": READING}]}]
    header = processor.apply_chat_template(asked, add_generation_prompt=True)
    full = processor.apply_chat_template(asked + [{"role": "assistant", "content": text}])
    full = full[: full.rindex("<|im_end|>") + len("<|im_end|>")]
    inputs = processor(text=[full], images=[image], return_tensors="pt")
    start = processor(text=[header], images=[image], return_tensors="pt")["input_ids"].shape[1]
    logits = model(**inputs).logits[0].float()
    ids = inputs["input_ids"][0]
    return sum(
        torch.log_softmax(logits[position - 1], -1)[ids[position]].item() for position in range(start, len(ids))
    )


def pictures(count: int) -> list[Image.Image]:
    rng = np.random.RandomState(3)
    return [Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)) for _ in range(count)]


def test_reading_log_likelihoods_of_a_padded_batch_are_each_rows_alone(reader, tokenizer, processor):
    images = pictures(3)
    texts = ["a red circle", "two blue squares above a green triangle", "yes"]
    batch = reader.reading_log_likelihoods(images, texts, tokenizer=tokenizer)
    alone = [scores_by_hand(reader, processor, image, text) for image, text in zip(images, texts)]
    assert batch.shape == (3,) and torch.allclose(batch, torch.tensor(alone), atol=1e-3)
    tensors = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) / 127.5 - 1 for image in images])
    assert torch.allclose(reader.reading_log_likelihoods(tensors, texts, tokenizer=tokenizer), batch, atol=1e-4)


def test_the_kept_drawing_is_the_best_read_of_those_drawn_one_after_another(reader, tokenizer):
    prompts = ["a red circle", "a blue square on the left"]
    seeds = (11, 12)
    out = reader.generate_images(
        prompts,
        tokenizer=tokenizer,
        candidates=3,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds for _ in range(2)][:4],
        **FAST,
    )
    generators = [torch.Generator().manual_seed(seed) for seed in seeds for _ in range(2)][:4]
    drawn = [
        reader.generate_images(prompts, tokenizer=tokenizer, num_images_per_prompt=2, generator=generators, **FAST)
        for _ in range(3)
    ]
    texts = [prompts[0], prompts[0], prompts[1], prompts[1]]
    scores = torch.stack([reader.reading_log_likelihoods(d.images, texts, tokenizer=tokenizer) for d in drawn])
    best = scores.argmax(0)
    for row in range(4):
        assert torch.equal(out.latents[row], drawn[int(best[row])].latents[row])
        assert torch.equal(out.images[row], drawn[int(best[row])].images[row])
    assert len(set(best.tolist())) > 1 or len({tuple(s.tolist()) for s in scores.T}) > 1  # a real choice was made
    once = reader.generate_images(prompts, tokenizer=tokenizer, generator=torch.Generator().manual_seed(5), **FAST)
    again = reader.generate_images(
        prompts, tokenizer=tokenizer, candidates=1, generator=torch.Generator().manual_seed(5), **FAST
    )
    assert torch.equal(once.latents, again.latents)  # 1 draws once, as before


def test_a_stored_candidates_count_is_the_default(reader, tokenizer, monkeypatch):
    stored = dict(reader.generation_config.image_generation or {})
    monkeypatch.setattr(reader.generation_config, "image_generation", {**stored, "candidates": 2})
    assert reader.image_generation_settings().candidates == 2
    calls = []
    original = type(reader).reading_log_likelihoods

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(reader), "reading_log_likelihoods", counted)
    reader.generate_images("a red circle", tokenizer=tokenizer, generator=torch.Generator().manual_seed(1), **FAST)
    assert len(calls) == 2
    reader.generate_images("a red circle", tokenizer=tokenizer, candidates=1, **FAST)
    assert len(calls) == 2


def test_input_ids_are_ranked_by_ranking_prompt(reader, tokenizer, processor):
    ids = tokenizer([processor.format_text_to_image_prompt("a red circle")], return_tensors="pt")
    with pytest.raises(HarmonSettingError, match="candidates ranks drawings .* pass prompt, or ranking_prompt"):
        reader.generate_images(input_ids=ids["input_ids"], tokenizer=tokenizer, candidates=2, **FAST)
    by_ids = reader.generate_images(
        input_ids=ids["input_ids"],
        ranking_prompt="a red circle",
        tokenizer=tokenizer,
        candidates=2,
        generator=torch.Generator().manual_seed(4),
        **FAST,
    )
    by_text = reader.generate_images(
        "a red circle", tokenizer=tokenizer, candidates=2, generator=torch.Generator().manual_seed(4), **FAST
    )
    assert torch.equal(by_ids.latents, by_text.latents)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"candidates": 0}, r"candidates must be an integer in \[1, 32\], got 0"),
        ({"candidates": 2.5}, r"candidates must be an integer in \[1, 32\], got 2.5"),
        ({"candidates": 2, "orders": torch.arange(16)[None].flip(1)}, "orders / noise_fn replay one drawing"),
        ({"candidates": 2, "context_images": [pictures(1)]}, "edit_mode 'direct'.* is not a caption"),
        ({"candidates": 2, "ranking_prompt": ["a", "b"]}, "ranking_prompt has 2 texts; give one, or one per prompt"),
    ],
)
def test_what_cannot_be_ranked_is_refused_by_name(reader, tokenizer, arguments, message):
    with pytest.raises(ValueError, match=message):
        reader.generate_images("a red circle", tokenizer=tokenizer, **FAST, **arguments)


def test_a_checkpoint_without_a_reading_prompt_cannot_rank(tiny_model, tokenizer):
    assert getattr(tiny_model.config, "reading_prompt", None) is None
    with pytest.raises(HarmonSettingError, match="no config.reading_prompt") as raised:
        tiny_model.generate_images("a red circle", tokenizer=tokenizer, candidates=2, **FAST)
    assert raised.value.field == "candidates"
    with pytest.raises(ValueError, match="reading_log_likelihoods needs config.reading_prompt"):
        tiny_model.reading_log_likelihoods(pictures(1), ["a red circle"], tokenizer=tokenizer)


def test_a_stored_count_draws_once_where_nothing_can_be_ranked(reader, tokenizer, processor, monkeypatch):
    stored = dict(reader.generation_config.image_generation or {})
    monkeypatch.setattr(reader.generation_config, "image_generation", {**stored, "candidates": 3})
    ids = tokenizer([processor.format_text_to_image_prompt("a red circle")], return_tensors="pt")
    for arguments in ({"input_ids": ids["input_ids"]}, {"prompt": "make it red", "context_images": pictures(1)}):
        out = reader.generate_images(
            tokenizer=tokenizer, generator=torch.Generator().manual_seed(2), **FAST, **arguments
        )
        once = reader.generate_images(
            tokenizer=tokenizer, candidates=1, generator=torch.Generator().manual_seed(2), **FAST, **arguments
        )
        assert torch.equal(out.latents, once.latents)
