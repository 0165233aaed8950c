"""Conditioning distillation (the `distill` task, issue 25): the model-level pieces against the loss path they come
from, the records and examples against the rows `generate_images` samples with, and a run of the trainer that
lowers the loss while the teacher stays the starting model and the saved config records what was taught."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import SourceSpec, load_source
from training.data.collate import collate
from training.data.examples import ExampleBuilder
from training.data.skips import SkipSample


def _picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _builder(processor, model) -> ExampleBuilder:
    return ExampleBuilder(
        processor,
        model.config,
        image_size=32,
        max_length=256,
        t2i_max_length=128,
        caption_dropout=0.0,
        min_image_side=8,
        max_aspect_ratio=10.0,
        kinds=("distill",),
    )


def _latents_and_mask(model, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand((3, 3, 32, 32), generator=generator) * 2 - 1
    with torch.no_grad():
        latents = model.model.encode_images(pixels)
    _, rows, cols, _ = latents.shape
    mask = model.draw_generation_mask(3, rows * cols, generator=generator)
    return latents, mask


# ------------------------------------------------------------------------------------------------- model pieces
def test_generation_condition_is_the_loss_paths_conditioning(tiny_model, tokenizer, processor, monkeypatch):
    """`generation_condition` gives what `text_to_image_loss` feeds the head; with its own conditioning as
    `condition_targets` the loss is 0 and the diffusion head never runs."""
    model = tiny_model.eval()
    ids, attention = model.tokenize_generation_prompts(["a red square", "two circles", "x"], tokenizer, processor)
    latents, mask = _latents_and_mask(model)
    assert mask.sum(1).unique().numel() == 1 and 0 < int(mask[0].sum()) <= mask.shape[1]
    with torch.no_grad():
        condition, target = model.generation_condition(ids, attention, latents, mask)
        full = model.text_to_image_loss(ids, attention, latents=latents, mask=mask)
    torch.testing.assert_close(condition, full.condition)
    torch.testing.assert_close(target, full.target)

    def no_head(*args, **kwargs):
        raise AssertionError("the diffusion head ran")

    monkeypatch.setattr(model.model.diffusion, "training_losses", no_head)
    with torch.no_grad():
        matched = model.text_to_image_loss(ids, attention, latents=latents, mask=mask, condition_targets=condition)
        shifted = model.text_to_image_loss(
            ids, attention, latents=latents, mask=mask, condition_targets=condition + 1.0
        )
    assert matched.loss.item() == 0.0
    picked = condition[mask]
    expected = 1.0 / (picked + 1.0).pow(2).mean()
    torch.testing.assert_close(shifted.loss, expected)


def test_condition_matching_loss_counts_masked_tokens_only_and_checks_shapes(tiny_model):
    condition = torch.zeros((2, 4, 3))
    targets = torch.ones((2, 4, 3))
    mask = torch.tensor([[True, False, False, False], [False, False, True, False]])
    targets[~mask] = 100.0  # unmasked tokens must not count
    assert tiny_model.condition_matching_loss(condition, targets, mask).item() == pytest.approx(1.0)
    condition[mask] = 1.0
    assert tiny_model.condition_matching_loss(condition, targets, mask).item() == 0.0
    with pytest.raises(ValueError, match="condition_targets must have the conditioning's shape"):
        tiny_model.condition_matching_loss(condition, targets[:, :3], mask)


# ------------------------------------------------------------------------------------------------- records
@pytest.fixture(scope="module")
def distill_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    for index in range(3):
        _picture(index).save(root / f"{index}.png")
    records = [
        {"target": "1.png", "prompt": "make it  red ", "sources": ["0.png"], "teacher_prompt": "a red square"},
        {"target": "0.png", "prompt": None, "sources": ["0.png"], "teacher_prompt": "a blue square"},
        {"target": "2.png", "prompt": "square, red", "sources": [], "teacher_prompt": "a red square"},
        {"target": "2.png", "prompt": None, "sources": [], "teacher_prompt": None},
    ]
    path = root / "distill.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return {"root": root, "jsonl": path, "records": records}


def test_distill_examples_are_the_sampling_rows(distill_data, tiny_model, tokenizer, processor):
    """An edit row's ids are `generate_images`' text-and-images row (its images-only row when the prompt is None);
    a row without sources is the text-to-image prompt; the teacher's ids are the teacher prompt's text-to-image
    prompt (None: the unconditional one); sources fill `context_pixel_values` in order."""
    model = tiny_model
    source = load_source(SourceSpec.parse(f"distill=jsonl:{distill_data['jsonl']}"))
    assert len(source) == 4
    root = distill_data["root"]
    assert source[0] == {
        "target": str(root / "1.png"),
        "sources": [str(root / "0.png")],
        "prompt": "make it  red ",
        "teacher_prompt": "a red square",
    }
    builder = _builder(processor, model)
    rng = np.random.default_rng(0)
    examples = [builder.build("distill", source[index], rng) for index in range(4)]
    settings = model.image_generation_settings(guidance_scale=2.0)
    sampling = model._context_prompt_batch(
        "make it  red ", None, None, [_picture(0)], settings, 1, tokenizer, processor
    )
    for row, example in ((0, examples[0]), (1, examples[1])):  # text and images; images only
        wanted = sampling.input_ids[row][sampling.attention_mask[row].bool()].tolist()
        assert example.input_ids == wanted
        assert example.context_pixel_values.shape == (1, 3, 32, 32)

    def t2i_ids(prompt):
        ids, attention = model.tokenize_generation_prompts([prompt], tokenizer, processor)
        return ids[0][attention[0].bool()].tolist()

    unconditional = builder.text_to_image_prompt_ids(None)
    assert examples[2].input_ids == t2i_ids("square, red") and examples[2].context_pixel_values is None
    assert examples[3].input_ids == unconditional and examples[3].teacher_input_ids == unconditional
    assert [example.teacher_input_ids for example in examples[:3]] == [
        t2i_ids("a red square"),
        t2i_ids("a blue square"),
        t2i_ids("a red square"),
    ]
    batch = collate("distill", examples, tokenizer.pad_token_id)
    assert batch["context_pixel_values"].shape == (2, 3, 32, 32) and "labels" not in batch
    for row, example in enumerate(examples):
        length = len(example.teacher_input_ids)
        assert batch["teacher_input_ids"][row, :length].tolist() == example.teacher_input_ids
        assert batch["teacher_attention_mask"][row].sum().item() == length


def test_bad_distill_records_are_skipped(distill_data, tmp_path):
    lines = [
        {"prompt": "x", "sources": [], "teacher_prompt": "y"},  # no target
        {"target": "0.png", "prompt": "  ", "sources": [], "teacher_prompt": "y"},  # blank prompt
        {"target": "0.png", "prompt": "x", "sources": [None], "teacher_prompt": "y"},
        {"target": "0.png", "prompt": "x", "sources": [], "teacher_prompt": 3},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    source = load_source(SourceSpec.parse(f"distill=jsonl:{path}?image_folder={distill_data['root']}"))
    for index, words in enumerate(("no 'target'", "'prompt' must be", "'sources' must hold", "'teacher_prompt' must")):
        with pytest.raises(SkipSample, match=words):
            source[index]


# ------------------------------------------------------------------------------------------------- training
def test_distillation_run_lowers_the_loss_keeps_the_teacher_and_records_editing(tiny_dir, distill_data, tmp_path):
    """training.train with a `distill` source on the tiny model (only the LLM trains, as stage IV): the distill
    loss falls, the MAR weights and the teacher are the starting model's, and `trained_tasks` gains `edit` (the
    records have sources) but not `distill`."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from harmon_training.train import build_parser, run
    from modeling_harmon.processing_harmon import HarmonProcessor

    start = tmp_path / "start"
    shutil.copytree(tiny_dir, start)
    # The random tiny model barely hears its prompt (its LLM's residual into the MAR features is small): louder, so
    # that prompts differ in conditioning, and without dropout, so that the loss is the prompts' difference alone.
    model = AutoModel.from_pretrained(start)
    with torch.no_grad():
        for parameter in model.model.proj_out.parameters():
            parameter.mul_(30.0)
    model.config.hidden_dropout = model.config.attention_dropout = 0.0
    model.config.trained_tasks = ["text2image", "image2text"]
    model.save_pretrained(start)
    yaml = tmp_path / "distill.yaml"
    yaml.write_text(
        "model: {init: pretrained}\n"
        "image_size: 32\n"
        "data:\n"
        f"  sources: [{{kind: distill, format: jsonl, path: {distill_data['jsonl']}}}]\n"
        "  ratio: {text: 0, image2text: 0, text2image: 0, distill: 2}\n"
        "  micro_batch_size: {distill: 4}\n"
        "  max_length: 256\n"
        "optim:\n"
        "  groups:\n"
        "    llm: {patterns: ['model\\.language_model\\.', '(^|\\.)lm_head\\.'], lr: 3.0e-3}\n"
        "    rest: {patterns: ['model\\.'], lr: 0.0, trainable: false}\n"
        "  warmup: 0\n"
        "  scheduler: constant\n"
        "train: {max_steps: 12, seed: 0, bf16: false, gradient_checkpointing: false, save_steps: 12,"
        " logging_steps: 1}\n"
    )
    final = run(
        build_parser().parse_args(
            ["--config", str(yaml), "--model", str(start), "--output-dir", str(tmp_path / "run")]
        )
    )
    state = json.loads((tmp_path / "run" / "checkpoint-12" / "trainer_state.json").read_text())
    losses = [entry["loss_distill"] for entry in state["log_history"] if "loss_distill" in entry]
    assert len(losses) == 12 and np.isfinite(losses).all()
    # The loss of every record, at fixed masks, against the starting model as teacher: before and after.
    teacher = AutoModel.from_pretrained(start).eval()
    trained = AutoModel.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(start)
    builder = _builder(HarmonProcessor.from_model_config(teacher.config, tokenizer), teacher)
    source = load_source(SourceSpec.parse(f"distill=jsonl:{distill_data['jsonl']}"))
    examples = [builder.build("distill", source[index], np.random.default_rng(0)) for index in range(4)]
    batch = collate("distill", examples, tokenizer.pad_token_id)
    with torch.no_grad():
        latents = teacher.model.encode_images(batch["pixel_values"])
        masks = [
            teacher.draw_generation_mask(
                4, latents.shape[1] * latents.shape[2], generator=torch.Generator().manual_seed(k)
            )
            for k in range(4)
        ]

        def held_in(student):
            total = 0.0
            for mask in masks:
                wanted, _ = teacher.generation_condition(
                    batch["teacher_input_ids"], batch["teacher_attention_mask"], latents, mask
                )
                got, _ = student.generation_condition(
                    batch["input_ids"], batch["attention_mask"], latents, mask, batch["context_pixel_values"]
                )
                total += student.condition_matching_loss(got, wanted, mask).item()
            return total / len(masks)

        before_loss, after_loss = held_in(teacher), held_in(trained)
    print(f"distill held-in loss {before_loss:.4f} -> {after_loss:.4f}; logged {losses}")
    assert after_loss < 0.7 * before_loss, (before_loss, after_loss)
    before, after = load_file(start / "model.safetensors"), load_file(final / "model.safetensors")
    frozen = [name for name in before if ".language_model." not in name and "lm_head" not in name]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert any(not torch.equal(before[name], after[name]) for name in before if ".language_model." in name)
    assert json.loads((final / "config.json").read_text())["trained_tasks"] == ["text2image", "image2text", "edit"]
