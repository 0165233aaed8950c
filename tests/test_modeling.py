"""HarmonForConditionalGeneration on a tiny random model: generation behaviour, padding, training, input checks."""

import copy
import math

import pytest
import torch

from modeling_harmon.demo import build_random_model
from tests.conftest import wake_zero_initialised


def _generators(*seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def _differ(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference of two latent tensors (random heads make latents large, so compare relatively)."""
    return float((a - b).abs().max() / a.abs().max())


def _images(model, tokenizer, prompt="a red circle", **kwargs):
    kwargs.setdefault("num_iter", 3)
    return model.generate_images(prompt, tokenizer=tokenizer, **kwargs)


def test_same_seed_same_image_other_seed_other_image(tiny_model, tokenizer):
    first = _images(tiny_model, tokenizer, generator=torch.Generator().manual_seed(1))
    again = _images(tiny_model, tokenizer, generator=torch.Generator().manual_seed(1))
    other = _images(tiny_model, tokenizer, generator=torch.Generator().manual_seed(2))
    assert first.images.shape == (1, 3, 32, 32) and first.images.dtype == torch.float32
    assert first.latents.shape == (1, 4, 8, 8)
    assert torch.equal(first.images, again.images)
    assert _differ(first.latents, other.latents) > 1e-2


def test_guidance_changes_the_image(tiny_model, tokenizer):
    # x0 clamping keeps the random head's latents bounded, so the condition's effect is visible.
    common = dict(x0_clamp=1.0, num_iter=2)
    plain = _images(tiny_model, tokenizer, guidance_scale=1.0, generator=torch.Generator().manual_seed(3), **common)
    guided = _images(tiny_model, tokenizer, guidance_scale=4.0, generator=torch.Generator().manual_seed(3), **common)
    negative = _images(
        tiny_model,
        tokenizer,
        guidance_scale=4.0,
        negative_prompt="blue",
        generator=torch.Generator().manual_seed(3),
        **common,
    )
    assert guided.latents.abs().max() < 10
    # Same seed, same orders: any difference comes from the unconditional branch (runs are bit-deterministic).
    assert _differ(plain.latents, guided.latents) > 1e-6
    assert _differ(guided.latents, negative.latents) > 1e-6


def test_images_per_prompt_and_per_image_generators(tiny_model, tokenizer):
    prompts = ["a red circle", "two blue squares on the right"]
    batch = _images(tiny_model, tokenizer, prompt=prompts, num_images_per_prompt=2, generator=_generators(0, 1, 2, 3))
    assert batch.images.shape == (4, 3, 32, 32)
    assert _differ(batch.latents[0], batch.latents[1]) > 1e-2
    alone = _images(tiny_model, tokenizer, prompt=prompts[1], generator=_generators(3))
    torch.testing.assert_close(alone.images[0], batch.images[3], atol=1e-4, rtol=0)
    assert _differ(alone.latents[0], batch.latents[3]) < 1e-4


def test_non_square_size(tiny_model, tokenizer):
    out = _images(tiny_model, tokenizer, height=32, width=48, num_iter=4, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 32, 48) and out.latents.shape == (1, 4, 8, 12)
    assert torch.isfinite(out.images).all()


def test_left_and_right_padding_give_the_same_images(tiny_model, tokenizer):
    texts = [
        tiny_model.format_generation_prompt(p, tokenizer=tokenizer)
        for p in ["a red circle", "two big yellow triangles at the top"]
    ]
    rows = [tokenizer(text)["input_ids"] for text in texts]
    length = max(map(len, rows))
    pad = tokenizer.pad_token_id
    right = torch.tensor([row + [pad] * (length - len(row)) for row in rows])
    left = torch.tensor([[pad] * (length - len(row)) + row for row in rows])
    right_mask, left_mask = (right != pad).long(), (left != pad).long()
    common = dict(num_iter=3, tokenizer=tokenizer, orders=torch.stack([torch.randperm(64), torch.randperm(64)]))
    a = tiny_model.generate_images(input_ids=right, attention_mask=right_mask, generator=_generators(5, 6), **common)
    b = tiny_model.generate_images(input_ids=left, attention_mask=left_mask, generator=_generators(5, 6), **common)
    torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)
    assert _differ(a.latents, b.latents) < 1e-4


def test_callback_sees_every_step_and_can_interrupt(tiny_model, tokenizer):
    steps = []

    def callback(step, num_iter, tokens, mask):
        steps.append((step, int(mask[0].sum())))
        return {"interrupt": True} if step == 1 else None

    _images(tiny_model, tokenizer, num_iter=4, callback=callback, generator=torch.Generator().manual_seed(0))
    assert [step for step, _ in steps] == [0, 1]
    assert steps[0][1] > steps[1][1]


def test_generate_image_mode_is_an_alias(tiny_model, tokenizer):
    direct = _images(tiny_model, tokenizer, generator=torch.Generator().manual_seed(9))
    alias = tiny_model.generate(
        "a red circle",
        generation_mode="image",
        tokenizer=tokenizer,
        num_iter=3,
        generator=torch.Generator().manual_seed(9),
    )
    assert torch.equal(direct.images, alias.images)


def test_bf16_runs_on_cpu(tiny, tokenizer):
    model = copy.deepcopy(tiny[0]).to(torch.bfloat16)
    out = _images(model, tokenizer, generator=torch.Generator().manual_seed(0))
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    pixels = out.images.clamp(-1, 1)
    logits = model(input_ids=_vqa_ids(model, tokenizer, "what?"), pixel_values=pixels).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def _vqa_ids(model, tokenizer, question, size=32):
    text = model.config.prompt_template.format(
        input="<image>" * model.config.num_image_placeholders(size, size) + question
    )
    return torch.tensor([tokenizer(text)["input_ids"]])


def test_text_generation_ignores_image_generation_defaults(tiny_model, tokenizer):
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    ids = _vqa_ids(tiny_model, tokenizer, "what color?")
    reference = tiny_model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    model = copy.deepcopy(tiny_model)
    model.generation_config.image_generation = dict(model.generation_config.image_generation, guidance_scale=7.0)
    assert model.generation_config.guidance_scale is None
    again = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    assert torch.equal(reference, again)


def test_batched_left_padded_text_generation_matches_single(tiny_model, tokenizer):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows = [_vqa_ids(tiny_model, tokenizer, q)[0].tolist() for q in ["what?", "what shape is on the left?"]]
    length, pad = max(map(len, rows)), tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (length - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    batched = tiny_model.generate(
        input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=5, do_sample=False, pad_token_id=pad
    )
    for index, row in enumerate(rows):
        single = tiny_model.generate(
            input_ids=torch.tensor([row]),
            pixel_values=pixels[index : index + 1],
            max_new_tokens=5,
            do_sample=False,
            pad_token_id=pad,
        )
        assert batched[index, length:].tolist() == single[0, len(row) :].tolist()


def test_understanding_loss_counts_only_labelled_tokens(tiny_model, tokenizer):
    ids = _vqa_ids(tiny_model, tokenizer, "what color? red")
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = ids[0, -3:]
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    out = tiny_model(input_ids=ids, pixel_values=pixels, labels=labels)
    logits = out.logits[0, -4:-1]
    expected = torch.nn.functional.cross_entropy(logits, ids[0, -3:])
    torch.testing.assert_close(out.loss, expected)
    summed = tiny_model(input_ids=ids, pixel_values=pixels, labels=labels, num_items_in_batch=torch.tensor(6))
    torch.testing.assert_close(summed.loss, expected * 3 / 6)


def test_three_level_vae_model_trains_one_step(tokenizer):
    model = wake_zero_initialised(build_random_model(seed=1)[0])
    model.train()
    assert not model.model.vae.training
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompt = [model.format_generation_prompt(p, tokenizer=tokenizer) for p in ["a red circle", "a blue square"]]
    ids = torch.tensor([tokenizer(text)["input_ids"][:20] for text in prompt])
    generation = model.text_to_image_loss(
        ids, torch.ones_like(ids), pixel_values=pixels, generator=torch.Generator().manual_seed(0)
    )
    vqa = _vqa_ids(model, tokenizer, "what? red").repeat(2, 1)
    understanding = model(
        input_ids=vqa, pixel_values=pixels, labels=vqa.masked_fill(vqa == model.config.image_token_id, -100)
    )
    loss = generation.loss + understanding.loss
    assert torch.isfinite(loss)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss.backward()
    assert all(p.grad is None for p in model.model.vae.parameters())
    for part in ("mar_encoder", "mar_decoder", "diffusion_head", "proj_in", "proj_out", "language_model"):
        grads = [p.grad for p in getattr(model.model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    optimizer.step()
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert any("mar_encoder" in name for name in changed) and any("diffusion_head" in name for name in changed)
    model.eval()
    assert torch.isfinite(_images(model, tokenizer, generator=torch.Generator().manual_seed(0)).images).all()


def test_mask_ratio_is_a_truncated_normal(tiny_model):
    draws = [tiny_model.sample_mask_ratio(torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert min(draws) >= tiny_model.config.mask_ratio_min and max(draws) <= 1.0
    assert 0.85 < sum(draws) / len(draws) < 0.92  # mean of N(1, 0.25) truncated to [0.7, 1] is ~0.88


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"height": 30}, "height"),
        ({"width": 0}, "width"),
        ({"num_iter": 0}, "num_iter"),
        ({"num_iter": 65}, "num_iter"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"temperature": 0.0}, "temperature"),
        ({"cfg_schedule": "cosine"}, "cfg_schedule"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"prompt": []}, "prompt"),
        ({"generator": _generators(0, 1)}, "generator"),
        ({"orders": torch.zeros(1, 64, dtype=torch.long)}, "orders"),
    ],
)
def test_bad_generation_arguments_are_refused(tiny_model, tokenizer, kwargs, argument):
    kwargs = {"prompt": "a red circle", "num_iter": 3, **kwargs}
    with pytest.raises(ValueError, match=argument):
        tiny_model.generate_images(tokenizer=tokenizer, **kwargs)


def test_bad_understanding_inputs_are_refused(tiny_model, tokenizer):
    ids = _vqa_ids(tiny_model, tokenizer, "what?")
    pixels = torch.rand(1, 3, 32, 32)
    is_image = ids == tiny_model.config.image_token_id
    one_fewer = ids[~(is_image & (is_image.cumsum(-1) == 1))][None]
    with pytest.raises(ValueError, match="placeholder"):
        tiny_model(input_ids=one_fewer, pixel_values=pixels)
    with pytest.raises(ValueError, match="placeholder"):
        tiny_model(input_ids=ids, pixel_values=pixels.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model(input_ids=ids, pixel_values=pixels[:, :1])
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model(input_ids=ids, pixel_values=(pixels * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model(input_ids=ids, pixel_values=torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model(input_ids=ids)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer):
    losses, grads = [], []
    for checkpointing in (False, True):
        model = wake_zero_initialised(build_random_model(seed=2)[0])
        model.config.attention_dropout = model.config.hidden_dropout = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = torch.tensor(
            [tokenizer(model.format_generation_prompt("a red circle", tokenizer=tokenizer))["input_ids"]]
        )
        pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        out = model.text_to_image_loss(
            ids, torch.ones_like(ids), pixel_values=pixels, generator=torch.Generator().manual_seed(0)
        )
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(model.model.mar_encoder.layers[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
