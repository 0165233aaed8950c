"""The TRL recipe for VQA LoRA (`training/trl_vqa.py`): LLaVA conversion, the collated labels, three SFTTrainer steps
on the tiny model that change only the adapters, and the saved adapter's reload and merge."""

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModel, AutoProcessor

from harmon_training.trl_vqa import (
    build_vqa_sft_trainer,
    llava_to_prompt_completion,
    load_llava_dataset,
    main,
    vqa_lora_config,
)
from modeling_harmon import HarmonForConditionalGeneration, HarmonProcessor


COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUESTION = "what color is the square?"
TRAIN_SETTINGS = dict(
    lora={"r": 4, "alpha": 8, "dropout": 0.0},
    max_steps=3,
    per_device_train_batch_size=2,
    learning_rate=1e-3,
    bf16=False,
    use_cpu=True,
    report_to="none",
    logging_steps=1,
    save_strategy="no",
    seed=0,
)


def square(rgb: tuple[int, int, int], seed: int) -> Image.Image:
    """A 32 px light canvas with a 14 px square of colour `rgb` at a random place."""
    pixels = np.full((32, 32, 3), 245, dtype=np.uint8)
    top, left = np.random.default_rng(seed).integers(0, 18, size=2)
    pixels[top : top + 14, left : left + 14] = rgb
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def llava_file(tmp_path_factory):
    """Six LLaVA records (`.jsonl`) about coloured squares; the last one has two exchanges."""
    root = tmp_path_factory.mktemp("llava")
    records = []
    for index in range(6):
        name, rgb = list(COLORS.items())[index % len(COLORS)]
        square(rgb, index).save(root / f"{index}.png")
        records.append(
            {
                "image": f"{index}.png",
                "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": name}],
            }
        )
    records[-1]["conversations"] += [{"from": "human", "value": "is it big?"}, {"from": "gpt", "value": "no"}]
    (root / "vqa.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return root / "vqa.jsonl"


@pytest.fixture(scope="module")
def trained(tiny_model, processor, llava_file, tmp_path_factory):
    """Three SFTTrainer steps on a copy of the tiny model, the adapter saved; with the weights before and after."""
    model = copy.deepcopy(tiny_model)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    dataset = load_llava_dataset(llava_file)
    output_dir = tmp_path_factory.mktemp("run")
    trainer = build_vqa_sft_trainer(model, processor, dataset, output_dir, **TRAIN_SETTINGS)
    lora_before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_" in name}
    batch = trainer.data_collator([dataset[index] for index in range(2)])
    trainer.train()
    trainer.save_model(output_dir)
    trainer.model.eval()
    return SimpleNamespace(
        trainer=trainer, dataset=dataset, output_dir=output_dir, before=before, lora_before=lora_before, batch=batch
    )


def logits(model, batch) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


# ---------------------------------------------------------------------------------------------------------- data
def test_llava_record_becomes_one_row_per_answer(tmp_path):
    record = {
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "Describe it.\n<image>"},
            {"from": "gpt", "value": "A square."},
            {"from": "human", "value": "Colour?"},
            {"from": "gpt", "value": "Red."},
        ],
    }
    rows = llava_to_prompt_completion(record, tmp_path)
    assert [row["images"] for row in rows] == [[str(tmp_path / "a.png")]] * 2
    question = [{"type": "image"}, {"type": "text", "text": "Describe it."}]
    assert rows[0]["prompt"] == [{"role": "user", "content": question}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": "A square."}]}]
    assert rows[1]["prompt"] == rows[0]["prompt"] + rows[0]["completion"] + [
        {"role": "user", "content": [{"type": "text", "text": "Colour?"}]}
    ]
    assert rows[1]["completion"][0]["content"][0]["text"] == "Red."
    assert llava_to_prompt_completion(record, tmp_path, every_turn=False) == rows[1:]


def test_llava_record_errors(tmp_path):
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    with pytest.raises(ValueError, match="one <image> per image; got 1 tags and 0 images"):
        llava_to_prompt_completion({"conversations": turns}, tmp_path)
    with pytest.raises(ValueError, match="'from': one of"):
        llava_to_prompt_completion({"image": "a.png", "conversations": [{"from": "bot", "value": "A"}]}, tmp_path)
    with pytest.raises(ValueError, match="at least one `gpt` answer"):
        llava_to_prompt_completion({"image": "a.png", "conversations": turns[:1]}, tmp_path)
    (tmp_path / "vqa.jsonl").write_text(json.dumps({"image": "missing.png", "conversations": turns}) + "\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_llava_dataset(tmp_path / "vqa.jsonl")


def test_dataset_rows_are_trl_prompt_completion(llava_file):
    dataset = load_llava_dataset(llava_file)
    assert len(dataset) == 7  # six records, the last with two answers
    row = dataset[0]
    assert isinstance(row["images"][0], Image.Image) and row["images"][0].size == (32, 32)
    assert row["prompt"][0]["content"][0]["type"] == "image"
    assert row["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}]


# ------------------------------------------------------------------------------------------------------- trainer
def test_collated_batch_supervises_only_answers(trained, processor):
    batch = trained.batch
    per_image = processor.image_processor.num_image_placeholders()
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    placeholders = batch["input_ids"] == processor.image_token_id
    assert placeholders.sum(-1).tolist() == [per_image, per_image]
    labels = batch["labels"]
    assert bool((labels[placeholders] == -100).all())
    supervised = [processor.tokenizer.decode(row[row != -100]) for row in labels]
    assert supervised == ["red<|im_end|>\n", "green<|im_end|>\n"]
    # Everything before the answer (chat markers, question, placeholders) is prompt: the answer comes last.
    prompt = processor.tokenizer.decode(batch["input_ids"][0][: int((labels[0] != -100).nonzero()[0])])
    assert prompt.endswith(f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def test_three_steps_change_only_the_adapters(trained, tiny_model):
    trainer = trained.trainer
    assert trainer.state.global_step == 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)

    adapted = {name.rsplit(".lora_", 1)[0] for name in trained.lora_before}
    assert adapted and all(".language_model.layers." in name for name in adapted)
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {name.split(".")[-1] for name in adapted} == projections
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == set(trained.lora_before)
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(after[name], value) for name, value in trained.lora_before.items())

    # Every base weight (LLM, MAR encoder/decoder, diffusion head, VAE) is bit-identical.
    base = {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in trainer.model.get_base_model().state_dict().items()
        if ".lora_" not in name
    }
    assert base.keys() == trained.before.keys()
    changed = [name for name, tensor in trained.before.items() if not torch.equal(base[name], tensor)]
    assert changed == []


def test_trl_loss_is_harmons_lm_loss(trained):
    """TRL's fused LM head (what training minimises) agrees with the loss of Harmon's own forward."""
    trainer, batch = trained.trainer, trained.batch
    with torch.no_grad():
        fused = trainer.compute_loss(trainer.model, dict(batch))
        own = trainer.model(**batch).loss
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-6)


def test_adapter_reloads_and_merges(trained, tiny_model):
    files = {path.name for path in trained.output_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json"} <= files
    expected = logits(trained.trainer.model, trained.batch)

    reloaded = PeftModel.from_pretrained(copy.deepcopy(tiny_model), trained.output_dir).eval()
    assert torch.equal(logits(reloaded, trained.batch), expected)

    merged = reloaded.merge_and_unload()
    assert type(merged) is HarmonForConditionalGeneration
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, trained.batch), expected, rtol=1e-4, atol=1e-5)
    assert (expected - logits(tiny_model, trained.batch)).abs().max() > 1e-4  # the adapter does something


def test_command_line_trains_and_saves_a_loadable_adapter(tiny_model, tokenizer, llava_file, tmp_path):
    model_dir, output_dir = tmp_path / "model", tmp_path / "run"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    arguments = [
        "--model",
        str(model_dir),
        "--data",
        str(llava_file),
        "--output-dir",
        str(output_dir),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--lora-r",
        "2",
        "--last-turn-only",
        "--no-bf16",
        "--logging-steps",
        "1",
    ]
    assert main(arguments) == 0
    assert json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(model_dir)
    # The module docstring's reload recipe.
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dir), output_dir)
    assert model.peft_config["default"].r == 2
    assert isinstance(AutoProcessor.from_pretrained(output_dir), HarmonProcessor)


def test_refuses_messages_data_short_max_length_and_unknown_lora_keys(tiny_model, processor, llava_file, tmp_path):
    dataset = load_llava_dataset(llava_file)
    messages = dataset.map(lambda row: {"messages": row["prompt"] + row["completion"]}).remove_columns(
        ["prompt", "completion"]
    )
    with pytest.raises(ValueError, match="images, prompt and completion"):
        build_vqa_sft_trainer(tiny_model, processor, messages, tmp_path)
    with pytest.raises(ValueError, match="max_length must exceed the 68 placeholders"):
        build_vqa_sft_trainer(tiny_model, processor, dataset, tmp_path, max_length=68)
    with pytest.raises(ValueError, match=r"unknown keys \['enabled'\]"):
        vqa_lora_config({"enabled": True})
