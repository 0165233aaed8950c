"""The `edit` training task (issue 24): its loss against a hand-built computation, a few steps that lower it, the
condition-dropout rows against the rows `generate_images` samples with, jsonl and hf sources with renamed columns,
skipped bad records, `trained_tasks` in the saved config, and a CPU smoke run of training/configs/edit_finetune.yaml
on the tiny model."""

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_harmon.demo import build_random_model
from training.data import MicroBatchStream, SourceSpec, collate, load_source
from training.data.examples import ExampleBuilder
from training.data.skips import SkipSample
from training.train import trained_tasks
from training.trainer import HarmonTrainer


INSTRUCTION = "invert the colours"
CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
KEEP = {"text": 0.0, "image": 0.0, "both": 0.0}
COLUMNS = "source_column=src&instruction_column=instr&target_column=tgt"


def _picture(seed: int, size=(32, 32)) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array)


def _inverted(image: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(image))


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def edit_data(tmp_path_factory):
    """8 synthetic edits (source: random image; target: its colour inversion; instruction "invert the colours") as
    jsonl with renamed fields `src` / `instr` / `tgt`, plus a record with two sources."""
    root = tmp_path_factory.mktemp("edits")
    records = []
    for index in range(8):
        source = _picture(index)
        source.save(root / f"{index}.png")
        _inverted(source).save(root / f"{index}_inverted.png")
        records.append({"src": f"{index}.png", "instr": INSTRUCTION, "tgt": f"{index}_inverted.png"})
    two = {"src": ["0.png", "1.png"], "instr": "swap them", "tgt": "1.png"}
    return {
        "root": root,
        "jsonl": _write_jsonl(root / "edits.jsonl", records),
        "two": _write_jsonl(root / "two.jsonl", [two]),
    }


def _builder(processor, model, **overrides) -> ExampleBuilder:
    settings = dict(
        image_size=32,
        max_length=256,
        t2i_max_length=128,
        caption_dropout=0.0,
        min_image_side=8,
        max_aspect_ratio=10.0,
        kinds=("edit",),
        edit_dropout=KEEP,
    )
    return ExampleBuilder(processor, model.config, **{**settings, **overrides})


def _forced(processor, model, dropped: str, **overrides) -> ExampleBuilder:
    """A builder whose every edit sample drops `dropped` (`keep`: nothing)."""
    dropout = {**KEEP, **({dropped: 1.0} if dropped != "keep" else {})}
    return _builder(processor, model, edit_dropout=dropout, **overrides)


def _record(*sources: Image.Image, target: Image.Image, instruction: str = INSTRUCTION) -> dict:
    return {"sources": list(sources), "instruction": instruction, "target": target}


def _trainer_loss(model, batch: dict) -> torch.Tensor:
    """The trainer's loss of one micro-batch (`HarmonTrainer.compute_loss` uses no trainer state)."""
    return HarmonTrainer.compute_loss(object.__new__(HarmonTrainer), model, batch)


# ------------------------------------------------------------------------------------------------- the loss
def test_edit_loss_equals_a_hand_built_computation(tiny_model, processor, tokenizer, monkeypatch):
    """Rows: two sources + instruction, one source + unconditional text, instruction without images. The hand-built
    loss tokenises each row with the processor, puts `get_image_features` of the sources at the placeholders row by
    row, and runs the MAR encoder, bridge, decoder and diffusion loss on the targets' tokens only."""
    model = tiny_model
    sources = [_picture(1), _picture(2), _picture(3)]
    targets = [_inverted(sources[0]), _inverted(sources[2]), _picture(4)]
    examples = [
        _forced(processor, model, "keep").edit(_record(sources[0], sources[1], target=targets[0]), _rng()),
        _forced(processor, model, "text").edit(_record(sources[2], target=targets[1]), _rng()),
        _forced(processor, model, "image").edit(_record(sources[0], target=targets[2]), _rng()),
    ]
    pad = tokenizer.pad_token_id
    batch = collate("edit", examples, pad)
    assert batch["context_pixel_values"].shape == (3, 3, 32, 32) and "labels" not in batch

    # --- by hand
    rows = [
        (processor.format_text_to_image_prompt(INSTRUCTION, num_images=2), sources[:2]),
        (processor.format_text_to_image_prompt(None, num_images=1), sources[2:]),
        (processor.format_text_to_image_prompt(INSTRUCTION), []),
    ]
    ids, pixels = [], []
    for text, images in rows:
        encoded = processor(text=text, images=images or None, return_tensors="pt")
        ids.append(encoded["input_ids"][0])
        pixels += list(encoded["pixel_values"]) if images else []
    length = max(len(row) for row in ids)
    input_ids = torch.full((3, length), pad)
    attention_mask = torch.zeros((3, length), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)], attention_mask[row, : len(tokens)] = tokens, 1
    assert torch.equal(input_ids, batch["input_ids"]) and torch.equal(attention_mask, batch["attention_mask"])
    assert torch.equal(torch.stack(pixels), batch["context_pixel_values"])

    inner = model.model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        features = inner.get_image_features(torch.stack(pixels))  # (3 images, 68, hidden)
        embeds = inner.get_input_embeddings()(input_ids.masked_fill(input_ids == model.config.image_token_id, 0))
        image = 0
        for row in range(3):
            positions = (input_ids[row] == model.config.image_token_id).nonzero().flatten()
            for chunk in positions.split(features.shape[1]) if len(positions) else ():
                embeds[row, chunk] = features[image]
                image += 1
        assert image == 3
        target_pixels = torch.stack(
            [processor.image_processor(t, size=32, return_tensors="pt")["pixel_values"][0] for t in targets]
        )
        assert torch.equal(target_pixels, batch["pixel_values"])
        tokens = inner.encode_images(target_pixels)
        b, rows_, cols, dim = tokens.shape
        target = tokens.reshape(b, rows_ * cols, dim)
        mask = torch.zeros(b, rows_ * cols, dtype=torch.bool)
        for row in range(b):
            mask[row, torch.randperm(rows_ * cols, generator=generator)[:40]] = True
        repeats = model.config.diffusion_batch_mul
        total = b * rows_ * cols * repeats
        timesteps = torch.randint(0, model.config.num_train_timesteps, (total,), generator=generator)
        noise = torch.randn((total, dim), generator=generator)
        encoded = inner.mar_encoder(target, mask, (rows_, cols))
        encoded = inner.bridge(encoded, attention_mask, prompt_embeds=embeds)
        condition = inner.mar_decoder(encoded, mask, (rows_, cols))
        terms = inner.diffusion.training_losses(
            inner.diffusion_head,
            target.reshape(-1, dim).repeat(repeats, 1),
            condition.reshape(b * rows_ * cols, -1).repeat(repeats, 1),
            timesteps,
            noise,
        )
        weights = mask.reshape(-1).repeat(repeats).float()
        expected = (terms["loss"] * weights).sum() / weights.sum()

        fixed = {"mask": mask, "timesteps": timesteps, "noise": noise}
        seen = []  # the prompt embeddings each loss call hands the bridge
        bridge = inner.bridge

        def recording_bridge(encoded, attention_mask, prompt_embeds=None, cache=None):
            seen.append(prompt_embeds.detach().clone())
            return bridge(encoded, attention_mask, prompt_embeds=prompt_embeds, cache=cache)

        monkeypatch.setattr(inner, "bridge", recording_bridge)
        loss = _trainer_loss(model, {**batch, **fixed})
        _trainer_loss(model, {**batch, **fixed, "context_pixel_values": batch["context_pixel_values"].roll(1, 0)})
        prompt_only = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
        with pytest.raises(ValueError, match="no context_pixel_values were given"):  # placeholders never go empty
            model(generation_targets=True, **prompt_only, **fixed)
    print(
        f"edit loss: trainer {loss.item():.7f}, hand-built {expected.item():.7f}, "
        f"|diff| {abs(loss - expected).item():.1e}"
    )
    assert abs(loss.item() - expected.item()) < 1e-5
    # The random tiny model's diffusion condition hardly depends on its prompt (about 1e-7), so the loss alone
    # cannot show where the images went: the prompt embeddings the bridge received must be the hand-built ones.
    torch.testing.assert_close(seen[0], embeds, atol=1e-6, rtol=1e-5)
    placeholders = input_ids == model.config.image_token_id
    moved = (seen[1] - seen[0]).abs().amax(-1) > 1e-6  # other images in other places: only placeholders change
    assert moved[placeholders].all() and not moved[~placeholders].any()
    assert len(seen) == 2


def test_the_edit_loss_refuses_placeholders_without_images(tiny_model, processor):
    example = _forced(processor, tiny_model, "keep").edit(_record(_picture(1), target=_picture(2)), _rng())
    batch = collate("edit", [example], 0)
    del batch["context_pixel_values"]
    with pytest.raises(ValueError, match="no context_pixel_values were given"):
        _trainer_loss(tiny_model, batch)


def test_a_few_training_steps_lower_the_edit_loss(edit_data, processor, tokenizer):
    """AdamW steps on the 8 inversions (micro-batches of 4 through the stream, the trainer's loss) lower the loss
    of a fixed held-in batch (fixed masks, timesteps and noise; eval mode)."""
    torch.manual_seed(0)
    model, _ = build_random_model(seed=0)
    spec = SourceSpec.parse(f"edit=jsonl:{edit_data['jsonl']}?{COLUMNS}")
    stream = MicroBatchStream(
        [spec], processor, model.config, ratio={"edit": 1}, micro_batch_size={"edit": 4}, image_size=32
    )
    builder = _forced(processor, model, "keep")
    records = [load_source(spec)[index] for index in range(8)]
    fixed = collate("edit", [builder.edit(record, _rng()) for record in records], tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(1)
    length = fixed["pixel_values"].shape[0] * 64 * model.config.diffusion_batch_mul
    fixed["mask"] = torch.stack([torch.randperm(64, generator=generator) < 48 for _ in range(8)])
    fixed["timesteps"] = torch.randint(0, 1000, (length,), generator=generator)
    fixed["noise"] = torch.randn((length, model.config.token_dim), generator=generator)

    def held_in_loss():
        model.eval()
        with torch.no_grad():
            return _trainer_loss(model, fixed).item()

    before = held_in_loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for position in range(12):
        model.train()
        loss = _trainer_loss(model, stream.batch_at(position))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))
    after = held_in_loss()
    print(f"held-in edit loss {before:.4f} -> {after:.4f}; step losses {losses}")
    assert after < 0.8 * before, (before, after, losses)


# ------------------------------------------------------------------------------------------------- dropout rows
def test_dropout_rows_are_the_sampling_rows(tiny_model, processor, tokenizer):
    """Text dropped = the sampling row "unconditional text + images", both dropped = "unconditional, no images",
    nothing dropped = "text + images": same ids, and (placed by `embed_with_images`, as in training) the same embeddings as
    `generate_images` builds with both guidance scales. Image dropped = the plain text-to-image prompt."""
    model, source = tiny_model, _picture(5)
    record = _record(source, target=_inverted(source), instruction="make it  darker ")
    settings = model.image_generation_settings(guidance_scale=2.0, image_guidance_scale=1.5)
    sampling = model._context_prompt_batch("make it  darker ", None, None, [source], settings, 1, tokenizer, processor)
    assert sampling.groups == 3
    for row, dropped in enumerate(("keep", "text", "both")):
        example = _forced(processor, model, dropped).edit(record, _rng())
        mask = sampling.attention_mask[row].bool()
        assert example.input_ids == sampling.input_ids[row][mask].tolist(), dropped
        assert (example.context_pixel_values is None) == (dropped == "both")
        ids = torch.tensor([example.input_ids])
        with torch.no_grad():
            if example.context_pixel_values is None:
                embeds = model.model.embed_tokens(ids)[0]
            else:
                embeds = model.model.embed_with_images(ids, example.context_pixel_values)[0][0]
        torch.testing.assert_close(embeds, sampling.inputs_embeds[row][mask], atol=1e-6, rtol=1e-5)
    image_dropped = _forced(processor, model, "image").edit(record, _rng())
    text_to_image, t2i_mask = model.tokenize_generation_prompts(["make it  darker "], tokenizer, processor)
    assert image_dropped.input_ids == text_to_image[0][t2i_mask[0].bool()].tolist()
    assert image_dropped.context_pixel_values is None
    assert model.config.image_token_id not in image_dropped.input_ids


def test_dropout_rates_follow_the_config(tiny_model, processor):
    builder = _builder(processor, tiny_model, edit_dropout={"text": 0.05, "image": 0.1, "both": 0.15})
    rng = np.random.default_rng(0)
    draws = [builder.edit_condition(rng) for _ in range(20000)]
    for name, rate in (("text", 0.05), ("image", 0.1), ("both", 0.15), ("keep", 0.7)):
        assert abs(draws.count(name) / len(draws) - rate) < 0.01, name
    default = _builder(processor, tiny_model, edit_dropout=None).edit_dropout
    assert default == {"text": 0.05, "image": 0.05, "both": 0.05}
    for bad in ({"text": 0.5, "image": 0.5, "both": 0.5}, {"text": 0.1}, {"text": -0.1, "image": 0, "both": 0}):
        with pytest.raises(ValueError, match="edit_dropout must map"):
            _builder(processor, tiny_model, edit_dropout=bad)


# ------------------------------------------------------------------------------------------------- sources
def test_jsonl_and_hf_sources_with_renamed_columns(edit_data, processor, tiny_model, tmp_path):
    root = edit_data["root"]
    jsonl = load_source(SourceSpec.parse(f"edit=jsonl:{edit_data['jsonl']}?{COLUMNS}"))
    assert len(jsonl) == 8
    assert jsonl[3] == {
        "sources": [str(root / "3.png")],
        "instruction": INSTRUCTION,
        "target": str(root / "3_inverted.png"),
    }
    two = load_source(SourceSpec.parse(f"edit=jsonl:{edit_data['two']}?{COLUMNS}"))[0]
    assert two["sources"] == [str(root / "0.png"), str(root / "1.png")]

    # MagicBrush-style columns (one image per source), and InstructPix2Pix-style names with a list of sources.
    pictures = [Image.open(root / f"{i}.png").convert("RGB") for i in range(4)]
    magicbrush = datasets.Dataset.from_dict(
        {
            "img_id": [str(i) for i in range(4)],
            "source_img": pictures,
            "instruction": [INSTRUCTION] * 4,
            "target_img": [_inverted(picture) for picture in pictures],
        },
        features=datasets.Features(
            {
                "img_id": datasets.Value("string"),
                "source_img": datasets.Image(),
                "instruction": datasets.Value("string"),
                "target_img": datasets.Image(),
            }
        ),
    )
    magicbrush.save_to_disk(str(tmp_path / "magicbrush"))
    pix2pix = datasets.Dataset.from_dict(
        {
            "original_image": [[picture, pictures[0]] for picture in pictures],
            "edit_prompt": ["combine them"] * 4,
            "edited_image": pictures,
        },
        features=datasets.Features(
            {
                "original_image": datasets.List(datasets.Image()),
                "edit_prompt": datasets.Value("string"),
                "edited_image": datasets.Image(),
            }
        ),
    )
    pix2pix.save_to_disk(str(tmp_path / "pix2pix"))
    specs = [
        f"edit=hf:{tmp_path / 'magicbrush'}?source_column=source_img&target_column=target_img",
        f"edit=hf:{tmp_path / 'pix2pix'}?source_column=original_image&instruction_column=edit_prompt"
        "&target_column=edited_image",
    ]
    record = load_source(SourceSpec.parse(specs[0]))[2]
    assert record["instruction"] == INSTRUCTION and set(record["sources"][0]) == {"bytes", "path"}  # undecoded
    record = load_source(SourceSpec.parse(specs[1]))[1]
    assert len(record["sources"]) == 2 and set(record["target"]) == {"bytes", "path"}
    stream = MicroBatchStream(
        [SourceSpec.parse(spec) for spec in specs],
        processor,
        tiny_model.config,
        ratio={"edit": 1},
        micro_batch_size={"edit": 4},
        image_size=32,
        edit_dropout=KEEP,
    )
    images = {0: 4, 1: 8}  # one source per MagicBrush row, two per InstructPix2Pix row
    for position in range(2):
        batch = stream.batch_at(position)
        assert batch["task"] == "edit" and batch["pixel_values"].shape == (4, 3, 32, 32)
        number = stream.source_at(position).path.endswith("pix2pix")
        assert batch["context_pixel_values"].shape[0] == images[number]
        placeholders = (batch["input_ids"] == tiny_model.config.image_token_id).sum().item()
        assert placeholders == images[number] * tiny_model.config.num_image_placeholders(32, 32)

    with pytest.raises(ValueError, match=r"source_column 'source' is not a column"):
        load_source(SourceSpec.parse(f"edit=hf:{tmp_path / 'magicbrush'}"))
    with pytest.raises(ValueError, match="source_column applies to kind edit only"):
        SourceSpec.parse("t2i=jsonl:x.jsonl?source_column=a")
    with pytest.raises(ValueError, match="image_column applies to kind caption or vqa or text or t2i only"):
        SourceSpec.parse("edit=hf:x?image_column=a")
    with pytest.raises(ValueError, match="holds kinds"):
        SourceSpec.parse("edit=llava_json:x.json")


def test_bad_edit_records_are_skipped_and_counted(edit_data, processor, tiny_model, tmp_path):
    root = edit_data["root"]
    Image.new("RGB", (4, 4)).save(root / "tiny.png")
    _picture(9, (64, 32)).save(root / "wide.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    good = {"src": "0.png", "instr": INSTRUCTION, "tgt": "0_inverted.png"}
    bad = [
        ({"src": "0.png", "instr": INSTRUCTION}, "bad_record"),  # no target
        ({**good, "instr": "   "}, "bad_record"),  # empty instruction
        ({**good, "src": []}, "bad_record"),  # no source image
        ({**good, "src": "corrupt.png"}, "unreadable_image"),
        ({**good, "src": "missing.png"}, "unreadable_image"),
        ({**good, "tgt": "tiny.png"}, "too_small"),
        ({**good, "tgt": "wide.png"}, "bad_aspect"),  # not aligned with its 32x32 source
        ({**good, "src": ["0.png"] * 3}, "too_long"),  # three sources' placeholders exceed max_length 200
    ]
    goods = [{**good, "src": f"{i}.png", "tgt": f"{i}_inverted.png"} for i in range(4)]
    path = _write_jsonl(tmp_path / "bad.jsonl", goods + [record for record, _ in bad])
    spec = SourceSpec.parse(f"edit=jsonl:{path}?{COLUMNS}&image_folder={root}")
    source, builder = load_source(spec), _builder(processor, tiny_model, max_length=200)
    for index, (_, reason) in enumerate(bad, start=len(goods)):
        with pytest.raises(SkipSample) as caught:
            builder.build("edit", source[index], np.random.default_rng(0))
        assert caught.value.reason == reason, (index, caught.value)
        if reason != "bad_record":  # skipped whatever the dropout draw: dropped images are still read and checked
            with pytest.raises(SkipSample, match=reason):
                dropping = _forced(processor, tiny_model, "both", max_length=200)
                dropping.build("edit", source[index], np.random.default_rng(0))
    stream = MicroBatchStream(
        [spec],
        processor,
        tiny_model.config,
        ratio={"edit": 1},
        micro_batch_size={"edit": 3},
        image_size=32,
        max_length=200,
        edit_dropout=KEEP,
    )
    for position in range(6):
        batch = stream.batch_at(position)
        assert batch["pixel_values"].shape == (3, 3, 32, 32)
    for reason in {reason for _, reason in bad}:
        assert stream.stats[reason] > 0, (reason, stream.stats)


# ------------------------------------------------------------------------------------------------- config
def test_edit_config_defaults_and_checks():
    from training.config import ConfigError, load_config

    config = load_config(None)
    assert config["data"]["ratio"]["edit"] == 0 and config["data"]["micro_batch_size"]["edit"] == 16
    assert config["data"]["edit_dropout"] == {"text": 0.05, "image": 0.05, "both": 0.05}
    assert (
        config["optim"]["task_loss_weights"]["edit"] == 1.0 and config["optim"]["task_max_grad_norm"]["edit"] is None
    )
    for stage in ("stage1_alignment", "stage2_joint", "stage3_high_quality", "finetune", "decoder_only"):
        assert load_config(CONFIGS / f"{stage}.yaml")["data"]["ratio"]["edit"] == 0  # existing recipes unchanged
    recipe = load_config(CONFIGS / "edit_finetune.yaml")
    assert recipe["data"]["ratio"] == {"text": 0, "image2text": 0, "text2image": 0, "edit": 1, "distill": 0}
    source = recipe["data"]["sources"][0]
    assert SourceSpec.from_dict(source).kind == "edit" and source["target_column"] == "target_img"
    with pytest.raises(ConfigError, match="edit_dropout must map"):
        load_config(None, ["data.edit_dropout={text: 0.6, image: 0.6, both: 0}"])
    with pytest.raises(ConfigError, match=r"data.micro_batch_size.edit must be an integer >= 1"):
        load_config(None, ["data.ratio.edit=1", "data.micro_batch_size={text: 1, image2text: 1, text2image: 1}"])
    with pytest.raises(ConfigError, match="data.ratio"):
        load_config(None, ["data.ratio={text: 1, image2text: 1, text2image: 1, editing: 1}"])


def test_trained_tasks_merge_and_config_round_trip(tmp_path):
    from modeling_harmon import HarmonConfig

    ratio = {"text": 0, "image2text": 1, "text2image": 2, "edit": 1}
    assert trained_tasks(None, ratio) == ["text2image", "image2text", "edit"]
    assert trained_tasks(["text", "custom"], {"edit": 1}) == ["text", "edit", "custom"]
    config = HarmonConfig(trained_tasks=["text2image", "edit"])
    config.save_pretrained(tmp_path)
    assert HarmonConfig.from_pretrained(tmp_path).trained_tasks == ["text2image", "edit"]
    assert HarmonConfig().trained_tasks is None  # unknown, as in configs written before the field
    with pytest.raises(ValueError, match="trained_tasks must be None or a list"):
        HarmonConfig(trained_tasks="edit")


# ------------------------------------------------------------------------------------------------- the recipe
def test_edit_finetune_recipe_smoke_run_records_trained_tasks(tiny_dir, edit_data, tmp_path):
    """training/configs/edit_finetune.yaml itself, on the tiny model and the synthetic inversions for 3 steps (the
    data, model, size and batch overridden as the other configs' smoke runs do). The starting checkpoint records the
    paper's tasks; the final model records them and `edit`."""
    from transformers import AutoModel

    from harmon_training.train import build_parser, run

    start = tmp_path / "start"
    shutil.copytree(tiny_dir, start)
    config = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**config, "trained_tasks": ["text2image", "image2text", "text"]}))
    arguments = [
        "--config",
        str(CONFIGS / "edit_finetune.yaml"),
        "--model",
        str(start),
        "--output-dir",
        str(tmp_path / "run"),
        "--data",
        f"edit=jsonl:{edit_data['jsonl']}?{COLUMNS}",
        "--set",
        "image_size=32",
        "--set",
        "data.micro_batch_size.edit=4",
        "--set",
        "data.max_length=256",
        "--set",
        "train.global_batch_size=null",
        "--set",
        "train.cycles_per_step=1",
        "--set",
        "train.save_steps=3",
        "--set",
        "train.logging_steps=1",
        "--set",
        "optim.warmup=0",
        "--set",
        "train.bf16=false",
        "--max-steps",
        "3",
    ]
    final = run(build_parser().parse_args(arguments))
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    losses = [entry for entry in state["log_history"] if "loss" in entry]
    print("edit_finetune smoke run:", [(entry["step"], entry["loss"], entry.get("loss_edit")) for entry in losses])
    assert [entry["step"] for entry in losses] == [1, 2, 3]
    assert all(np.isfinite(entry["loss_edit"]) for entry in losses)
    saved = json.loads((final / "config.json").read_text())
    assert saved["trained_tasks"] == ["text2image", "image2text", "text", "edit"]
    model = AutoModel.from_pretrained(final)
    assert model.config.trained_tasks == ["text2image", "image2text", "text", "edit"]
    checkpoint = json.loads((tmp_path / "run" / "checkpoint-3" / "config.json").read_text())
    assert checkpoint["trained_tasks"] == saved["trained_tasks"]
    assert json.loads((tmp_path / "run" / "data_skips.json").read_text())["total"] == 0
