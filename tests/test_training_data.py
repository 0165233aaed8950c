"""Training data: source formats, the `--data` grammar, the task mixture, examples and labels, skips, determinism,
rank sharding, resume, streaming, data-loader workers and the latents cache, on tiny generated data and the tiny
random model."""

import io
import json
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from training.data import (
    FORMATS,
    KIND_TO_TASK,
    SKIP_REASONS,
    LatentsCache,
    MicroBatchStream,
    SourceSpec,
    cache_text_to_image_latents,
    interleave,
    load_source,
)
from training.data.chat import ChatEncoder
from training.data.examples import ExampleBuilder, to_messages
from training.data.images import square_crop
from training.data.skips import SkipSample


NUM_RECORDS = 12
CAPTION = re.compile(r"caption number (\d+)")
HF_COLUMNS = "image_column=picture&text_column=caption"


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Paths of tiny sources of every kind and format: 48x40 coloured images (so a random square crop has room to
    move) with unique captions `caption number {i}`, which identify each record in a batch."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    for index in range(NUM_RECORDS):
        Image.new("RGB", (48, 40), (20 * index, 255 - 20 * index, 90)).save(root / "images" / f"{index}.png")
    Image.new("RGB", (4, 4)).save(root / "images" / "tiny.png")
    Image.new("RGB", (200, 10)).save(root / "images" / "wide.png")
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    captions = [{"image": f"images/{i}.png", "text": f"caption number {i}"} for i in range(NUM_RECORDS)]
    turns = [("human", "<image>\nWhat colour is it?"), ("gpt", "colour {i}"), ("human", "Sure?"), ("gpt", "Yes.")]
    conversations = [
        {
            "image": f"images/{i}.png",
            "conversations": [{"from": who, "value": text.format(i=i)} for who, text in turns],
        }
        for i in range(NUM_RECORDS)
    ]
    chats = [
        {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}!"}]}
        for i in range(NUM_RECORDS)
    ]
    bad = [
        {"image": f"images/{name}.png", "text": f"caption number {90 + n}"}
        for n, name in enumerate(["tiny", "wide", "corrupt", "missing"])
    ]
    paths = {
        "t2i": _write_jsonl(root / "t2i.jsonl", captions),
        "vqa": _write_jsonl(root / "vqa.jsonl", conversations),
        "text": _write_jsonl(root / "text.jsonl", chats),
        # records 0-3 are good, then too small, too wide, corrupt, missing, and one without an image
        "bad": _write_jsonl(root / "bad.jsonl", captions[:4] + bad + [{"text": "no image"}]),
        "all_bad": _write_jsonl(root / "all_bad.jsonl", [{"image": "images/corrupt.png", "text": "broken"}] * 3),
        "llava": root / "llava.json",
        "reference": root / "data_info.json",
        "hf": root / "hf",
        "parquet": root / "parquet",
    }
    paths["llava"].write_text(json.dumps(conversations))
    (root / "annotations").mkdir()
    for index in range(NUM_RECORDS):
        (root / "annotations" / f"{index}.json").write_text(json.dumps({"caption": f"caption number {index}"}))
    entries = [{"image": f"images/{i}.png", "annotation": f"annotations/{i}.json"} for i in range(NUM_RECORDS)]
    paths["reference"].write_text(json.dumps(entries))
    features = datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")})
    rows = {
        "picture": [Image.open(root / "images" / f"{i}.png").convert("RGB") for i in range(NUM_RECORDS)],
        "caption": [f"caption number {i}" for i in range(NUM_RECORDS)],
    }
    dataset = datasets.Dataset.from_dict(rows, features=features)
    dataset.save_to_disk(str(paths["hf"]))
    paths["parquet"].mkdir()
    dataset.to_parquet(str(paths["parquet"] / "train.parquet"))
    return paths


def make_stream(processor, model, sources: list, ratio: dict, sizes: int | dict = 1, **kwargs) -> MicroBatchStream:
    """A stream over `sources` (`--data` strings or specs) at 32 px; `sizes`: one micro-batch size for all tasks."""
    specs = [SourceSpec.parse(source) if isinstance(source, str) else source for source in sources]
    sizes = dict.fromkeys(ratio, sizes) if isinstance(sizes, int) else sizes
    kwargs = {"image_size": 32, "max_length": 256, "caption_dropout": 0.0, **kwargs}  # no dropout: captions identify
    return MicroBatchStream(specs, processor, model.config, ratio=ratio, micro_batch_size=sizes, **kwargs)


def caption_numbers(tokenizer, batch: dict) -> list[int]:
    """The record number of each row, read back from its caption (-1 without one)."""
    numbers = []
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        match = CAPTION.search(tokenizer.decode(row[mask.bool()]))
        numbers.append(int(match.group(1)) if match else -1)
    return numbers


def assert_batches_equal(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert value == second[key] if key == "task" else torch.equal(value, second[key]), key


def build_examples(processor, model, **overrides) -> ExampleBuilder:
    settings = dict(
        image_size=32, max_length=256, t2i_max_length=128, caption_dropout=0.0, min_image_side=8, max_aspect_ratio=10.0
    )
    return ExampleBuilder(processor, model.config, **{**settings, **overrides})


# ------------------------------------------------------------------------------------------------- sources
def test_source_spec_parse_grammar():
    spec = SourceSpec.parse("caption=hf:C:/sets/a=b?weight=0.5&split=validation&image_column=img&text_column=caption")
    assert (spec.kind, spec.format, spec.path, spec.weight) == ("caption", "hf", "C:/sets/a=b", 0.5)
    assert spec.task == "image2text"
    assert (spec.split, spec.image_column, spec.text_column) == ("validation", "img", "caption")
    assert SourceSpec.parse("t2i=hf:org/set?streaming=true").streaming is True
    assert SourceSpec.parse("vqa=llava_json:x.json?image_folder=/imgs").image_folder == "/imgs"
    assert SourceSpec.from_dict({"kind": "text", "format": "jsonl", "path": "t.jsonl", "weight": 2}).weight == 2
    assert set(KIND_TO_TASK) == {"text", "caption", "vqa", "t2i", "edit", "distill"} and len(FORMATS) == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("jsonl:x.jsonl", "no '=' after the kind"),
        ("caption=x.jsonl", "no ':' after the format"),
        ("picture=jsonl:x", "kind must be one of"),
        ("caption=csv:x", "format must be one of"),
        ("caption=jsonl:", "path must be a non-empty string"),
        ("caption=jsonl:x?weight=heavy", "weight must be a number"),
        ("caption=jsonl:x?weight=0", "weight must be a finite number > 0"),
        ("caption=jsonl:x?colour=red", "key one of"),
        ("caption=jsonl:x?weight=1&weight=2", "given twice"),
        ("caption=jsonl:x?split=train", "split applies to format hf only"),
        ("caption=hf:x?streaming=maybe", "streaming must be one of"),
        ("text=reference_folder:x", "holds kinds ('caption', 't2i') only"),
    ],
)
def test_source_spec_parse_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SourceSpec.parse(text)


def test_source_spec_from_dict_errors():
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]; valid keys are \['kind', 'format', 'path'"):
        SourceSpec.from_dict({"kind": "t2i", "format": "jsonl", "path": "x", "colour": "red"})
    with pytest.raises(ValueError, match=r"lacks the required keys \['path'\]"):
        SourceSpec.from_dict({"kind": "t2i", "format": "jsonl"})


def test_every_format_loads_records(data):
    images = data["t2i"].parent / "images"
    jsonl = load_source(SourceSpec("t2i", "jsonl", str(data["t2i"])))
    assert len(jsonl) == NUM_RECORDS and jsonl[3] == {"image": str(images / "3.png"), "text": "caption number 3"}
    reference = load_source(SourceSpec("caption", "reference_folder", str(data["reference"])))
    assert len(reference) == NUM_RECORDS
    assert reference[5] == {"image": str(images / "5.png"), "text": "caption number 5"}
    for spec in (SourceSpec("vqa", "jsonl", str(data["vqa"])), SourceSpec("vqa", "llava_json", str(data["llava"]))):
        record = load_source(spec)[2]
        assert record["image"] == str(images / "2.png")
        assert record["messages"][1] == {"from": "gpt", "value": "colour 2"}
    assert load_source(SourceSpec("text", "jsonl", str(data["text"])))[1]["messages"][1]["content"] == "1!"

    hf = load_source(SourceSpec.parse(f"t2i=hf:{data['hf']}?{HF_COLUMNS}"))
    record = hf[4]
    assert len(hf) == NUM_RECORDS and record["text"] == "caption number 4"
    assert Image.open(io.BytesIO(record["image"]["bytes"])).size == (48, 40)  # left encoded, decoded when sampled
    stream = load_source(SourceSpec.parse(f"t2i=hf:{data['parquet']}?{HF_COLUMNS}&streaming=true"))
    texts = [stream.to_record(row)["text"] for row in stream.rows(1, 4)]  # reader 1 of 4
    assert texts == [f"caption number {i}" for i in range(1, NUM_RECORDS, 4)]

    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_source(SourceSpec("t2i", "jsonl", "nowhere.jsonl"))
    with pytest.raises(ValueError, match=r"image_column 'image' is not a column of .*\['picture', 'caption'\]"):
        load_source(SourceSpec("t2i", "hf", str(data["hf"]), text_column="caption"))
    with pytest.raises(SkipSample, match="bad_record"):
        load_source(SourceSpec("t2i", "jsonl", str(data["bad"])))[8]


# ------------------------------------------------------------------------------------------------- mixture
def test_task_ratio_is_exact_and_interleaved(data, processor, tiny_model):
    sources = [
        f"t2i=jsonl:{data['t2i']}",
        f"caption=jsonl:{data['t2i']}",
        f"vqa=jsonl:{data['vqa']}",
        f"text=jsonl:{data['text']}",
    ]
    stream = make_stream(processor, tiny_model, sources, {"text": 1, "image2text": 3, "text2image": 8})
    assert len(stream.cycle) == 12
    tasks = [stream.task_at(position) for position in range(5 * 12)]
    for cycle in range(5):
        assert Counter(tasks[12 * cycle : 12 * (cycle + 1)]) == {"text": 1, "image2text": 3, "text2image": 8}
    assert [position for position, task in enumerate(stream.cycle) if task != "text2image"] == [1, 5, 6, 10]
    assert interleave([("a", 1), ("b", 3)]) == ["b", "a", "b", "b"]

    # caption and vqa share image2text evenly; weights set shares exactly
    kinds = Counter(stream.source_at(position).kind for position in range(120) if tasks[position % 12] == "image2text")
    assert kinds == {"caption": 15, "vqa": 15}
    weighted_sources = [f"t2i=jsonl:{data['t2i']}?weight=3", f"t2i=hf:{data['hf']}?{HF_COLUMNS}"]
    weighted = make_stream(processor, tiny_model, weighted_sources, {"text2image": 1})
    assert Counter(weighted.source_at(position).format for position in range(40)) == {"jsonl": 30, "hf": 10}

    with pytest.raises(ValueError, match=r"needs sources for the tasks \['text'\].*'text': \['text'\]"):
        make_stream(processor, tiny_model, sources[:1], {"text": 1, "text2image": 1})
    with pytest.raises(ValueError, match=r"micro_batch_size has no size for the tasks \['text2image'\]"):
        make_stream(processor, tiny_model, sources, {"text2image": 1}, {"text": 1})


def test_caption_dropout_rate(data, processor, tiny_model, tokenizer):
    source = f"t2i=jsonl:{data['t2i']}"
    stream = make_stream(processor, tiny_model, [source], {"text2image": 1}, 100, caption_dropout=0.1)
    unconditional = tokenizer(processor.format_text_to_image_prompt(None))["input_ids"]
    rows = []
    for position in range(20):
        batch = stream.batch_at(position)
        rows += [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert len(rows) == 2000 and abs(sum(row == unconditional for row in rows) / len(rows) - 0.1) < 0.02


# ------------------------------------------------------------------------------------------------- examples
def test_text_to_image_prompt_truncates_caption_not_template(processor, tiny_model, tokenizer):
    builder = build_examples(processor, tiny_model, t2i_max_length=48)
    caption = "a very long caption " * 20
    ids = builder.text_to_image_prompt_ids(caption)
    template = len(tokenizer(processor.format_text_to_image_prompt(""))["input_ids"])  # one token per byte here
    assert len(ids) == 48 and tokenizer.decode(ids) == processor.format_text_to_image_prompt(caption[: 48 - template])
    assert tokenizer.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    short = tokenizer(processor.format_text_to_image_prompt("short"))["input_ids"]
    assert builder.text_to_image_prompt_ids("short") == short
    with pytest.raises(ValueError, match=r"t2i_max_length \(10\) must hold the text-to-image prompt template"):
        build_examples(processor, tiny_model, t2i_max_length=10)


def test_caption_labels_cover_answer_and_end_of_turn(data, processor, tiny_model, tokenizer):
    batch = make_stream(processor, tiny_model, [f"caption=jsonl:{data['t2i']}"], {"image2text": 1}, 3).batch_at(0)
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["pixel_values"].abs().max() <= 1
    for row, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        assert int((row == tiny_model.config.image_token_id).sum()) == tiny_model.config.num_image_placeholders(32, 32)
        supervised = labels != -100
        assert torch.equal(labels[supervised], row[supervised])
        text, answer = tokenizer.decode(row[mask.bool()]), tokenizer.decode(labels[supervised])
        assert re.fullmatch(r"caption number \d+<\|im_end\|>", answer)
        assert text.endswith(f"<|im_start|>assistant\n{answer}\n")  # the newline after <|im_end|> carries no loss
        positions = supervised.nonzero().flatten().tolist()  # one run, ending at <|im_end|>
        assert positions == list(range(positions[0], positions[-1] + 1))
        assert int(row[positions[-1]]) == tiny_model.config.eos_token_id
        assert not supervised[~mask.bool()].any()


def test_vqa_and_text_labels_supervise_every_answer(data, processor, tiny_model, tokenizer):
    sources = [f"vqa=llava_json:{data['llava']}", f"text=jsonl:{data['text']}"]
    stream = make_stream(processor, tiny_model, sources, {"image2text": 1, "text": 1}, 2)
    for batch in (stream.batch_at(0), stream.batch_at(1)):
        for labels in batch["labels"]:
            answers = tokenizer.decode(labels[labels != -100])
            if batch["task"] == "image2text":
                assert re.fullmatch(r"colour \d+<\|im_end\|>Yes\.<\|im_end\|>", answers)
            else:
                assert re.fullmatch(r"\d+!<\|im_end\|>", answers) and "pixel_values" not in batch
    columns = {"from": ["human", "gpt"], "value": ["Why?", "So."]}  # how a `datasets.Sequence` of turns reads back
    assert to_messages(columns) == [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "So."}]


def test_truncation_keeps_prompt_and_placeholders(processor, tiny_model, tokenizer):
    placeholders = tiny_model.config.num_image_placeholders(32, 32)
    messages = [
        {"role": "user", "content": "<image>\nDescribe."},
        {"role": "assistant", "content": "x" * 40},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "No."},
    ]
    eos = tiny_model.config.eos_token_id
    full_ids, _ = ChatEncoder(processor, eos, 1000).encode(messages, placeholders)
    prompt = "<|im_start|>user\n\nDescribe.<|im_end|>\n<|im_start|>assistant\n"  # without its <image>
    prompt_length = len(tokenizer(prompt)["input_ids"]) + placeholders
    ids, labels = ChatEncoder(processor, eos, prompt_length + 10).encode(messages, placeholders)
    assert ids == full_ids[: prompt_length + 10] and ids.count(tiny_model.config.image_token_id) == placeholders
    assert tokenizer.decode([label for label in labels if label != -100]) == "x" * 10  # cut answer: no <|im_end|>
    with pytest.raises(SkipSample, match="too_long"):
        ChatEncoder(processor, eos, prompt_length).encode(messages, placeholders)
    with pytest.raises(ValueError, match=r"max_length \(60\) cannot hold a caption sample with its 68 image"):
        build_examples(processor, tiny_model, max_length=60)


def test_too_long_samples_are_skipped_and_counted(data, processor, tiny_model, tmp_path):
    image = str(data["t2i"].parent / "images" / "0.png")
    records = [
        {
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>\n" + "why? " * (60 if i % 2 else 1)},
                {"from": "gpt", "value": "ok"},
            ],
        }
        for i in range(8)
    ]
    source = f"vqa=jsonl:{_write_jsonl(tmp_path / 'long.jsonl', records)}"
    stream = make_stream(processor, tiny_model, [source], {"image2text": 1}, 4, max_length=150)
    for position in range(4):
        batch = stream.batch_at(position)
        assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 150
    assert stream.stats["too_long"] > 0


# ------------------------------------------------------------------------------------------------- skips
def test_bad_images_are_skipped_counted_and_capped(data, processor, tiny_model, tokenizer):
    stream = make_stream(processor, tiny_model, [f"t2i=jsonl:{data['bad']}"], {"text2image": 1}, 4)
    for position in range(12):
        batch = stream.batch_at(position)
        assert batch["pixel_values"].shape == (4, 3, 32, 32)
        assert all(0 <= number < 4 for number in caption_numbers(tokenizer, batch))  # only the good records
    assert set(stream.stats) == set(SKIP_REASONS)
    for reason in ("too_small", "bad_aspect", "unreadable_image", "bad_record"):
        assert stream.stats[reason] > 0, reason
    broken = make_stream(processor, tiny_model, [f"t2i=jsonl:{data['all_bad']}"], {"text2image": 1}, 2)
    with pytest.raises(RuntimeError, match=r"data source t2i=jsonl:.*all_bad.jsonl: 40 samples were skipped"):
        broken.batch_at(0)
    assert broken.stats["unreadable_image"] == 40


# ------------------------------------------------------------------------------------------------- determinism
def test_batches_are_deterministic_and_resume_exactly(data, processor, tiny_model):
    sources = [f"t2i=jsonl:{data['t2i']}", f"caption=jsonl:{data['t2i']}", f"vqa=jsonl:{data['vqa']}"]
    ratio, sizes = {"image2text": 1, "text2image": 2}, {"image2text": 2, "text2image": 3}
    first, second = (make_stream(processor, tiny_model, sources, ratio, sizes, seed=7) for _ in range(2))
    assert_batches_equal(first.batch_at(9), second.batch_at(9))
    resumed = iter(make_stream(processor, tiny_model, sources, ratio, sizes, seed=7, start=5))
    for position in range(5, 9):
        assert_batches_equal(next(resumed), first.batch_at(position))
    other_seed = make_stream(processor, tiny_model, sources, ratio, sizes, seed=8).batch_at(9)
    assert not torch.equal(other_seed["pixel_values"], first.batch_at(9)["pixel_values"])


def test_ranks_get_disjoint_samples_and_the_same_tasks(data, processor, tiny_model, tokenizer):
    sources = [f"t2i=jsonl:{data['t2i']}", f"caption=jsonl:{data['t2i']}"]
    ranks = [
        make_stream(processor, tiny_model, sources, {"image2text": 1, "text2image": 1}, 3, rank=rank, world_size=2)
        for rank in range(2)
    ]
    seen = Counter()
    for position in range(8):
        batches = [stream.batch_at(position) for stream in ranks]
        assert batches[0]["task"] == batches[1]["task"] == ("image2text", "text2image")[position % 2]
        if batches[0]["task"] == "text2image":  # 4 micro-batches x 2 ranks x 3 samples = 2 epochs of 12 records
            numbers = [caption_numbers(tokenizer, batch) for batch in batches]
            assert not set(numbers[0]) & set(numbers[1])
            seen.update(numbers[0] + numbers[1])
    assert seen == dict.fromkeys(range(NUM_RECORDS), 2)  # together the ranks read every record once per epoch


def test_streaming_source_reads_in_order_and_resumes(data, processor, tiny_model, tokenizer):
    sources = [f"t2i=hf:{data['parquet']}?streaming=true&{HF_COLUMNS}", f"caption=jsonl:{data['t2i']}"]
    ratio, sizes = {"image2text": 1, "text2image": 1}, {"image2text": 1, "text2image": 5}
    stream = make_stream(processor, tiny_model, sources, ratio, sizes)
    batches = [stream.batch_at(position) for position in range(6)]
    assert caption_numbers(tokenizer, batches[1]) + caption_numbers(tokenizer, batches[3]) == list(range(10))
    assert caption_numbers(tokenizer, batches[5]) == [10, 11, 0, 1, 2]  # the next pass starts over
    with pytest.raises(ValueError, match="read in order"):
        stream.batch_at(3)
    resumed = make_stream(processor, tiny_model, sources, ratio, sizes, start=5)
    assert_batches_equal(next(iter(resumed)), batches[5])  # reached by re-reading the stream's earlier micro-batches


def test_data_loader_workers_keep_order_and_streams_resume(data, processor, tiny_model):
    sources = [f"t2i=hf:{data['parquet']}?streaming=true&{HF_COLUMNS}", f"caption=jsonl:{data['t2i']}"]
    ratio = {"image2text": 1, "text2image": 2}

    def first_batches(start: int, count: int) -> list[dict]:
        stream = make_stream(processor, tiny_model, sources, ratio, 2, start=start)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        return [batch for batch, _ in zip(loader, range(count))]

    run = first_batches(0, 6)
    direct = make_stream(processor, tiny_model, sources, ratio, 2)
    assert [batch["task"] for batch in run] == [direct.task_at(position) for position in range(6)]
    for position, batch in enumerate(run):
        if batch["task"] == "image2text":  # map-style: the same as built directly
            assert_batches_equal(batch, direct.batch_at(position))
    for position, batch in enumerate(first_batches(3, 3), start=3):  # each worker re-reads its share of the stream
        assert_batches_equal(batch, run[position])


# ------------------------------------------------------------------------------------------------- model
def test_batches_feed_the_model(data, processor, tiny_model):
    sources = [f"t2i=reference_folder:{data['reference']}", f"vqa=jsonl:{data['vqa']}", f"text=jsonl:{data['text']}"]
    stream = make_stream(processor, tiny_model, sources, {"text": 1, "image2text": 1, "text2image": 1}, 2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for position in range(3):
            batch = dict(stream.batch_at(position))
            task = batch.pop("task")
            if task == "text2image":
                loss = tiny_model.text_to_image_loss(**batch, generator=generator).loss
            else:
                loss = tiny_model(**batch).loss
            assert torch.isfinite(loss), task


def test_latents_cache_round_trip(data, processor, tiny_model, tmp_path):
    spec = SourceSpec("t2i", "jsonl", str(data["bad"]))
    settings = dict(image_size=32, batch_size=3, records_per_shard=4)
    folder = cache_text_to_image_latents(tiny_model, spec, tmp_path / "cache", **settings)
    index = json.loads((folder / "index.json").read_text())
    assert [shard["start"] for shard in index["shards"]] == [0, 4, 8] and index["crop"] == "center"
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    cache_text_to_image_latents(tiny_model, spec, folder, **settings)
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written  # finished: nothing redone
    (folder / "index.json").unlink()  # as if interrupted after the first two shards
    (folder / index["shards"][2]["file"]).unlink()
    cache_text_to_image_latents(tiny_model, spec, folder, **settings)
    rewritten = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert [rewritten[shard["file"]] == written[shard["file"]] for shard in index["shards"]] == [True, True, False]

    source = load_source(spec)
    cache = LatentsCache(folder)
    assert cache.find(source, 64) is None
    latents, size = cache.find(source, 32).load(2)
    image = Image.open(source[2]["image"]).convert("RGB")
    expected = tiny_model.model.encode_images(square_crop(image, 32, None)[None])[0]
    assert size == (48, 40) and torch.allclose(latents, expected, atol=1e-2)
    with pytest.raises(SkipSample, match="unreadable_image"):
        cache.find(source, 32).load(6)  # the corrupt file

    stream = make_stream(processor, tiny_model, [spec], {"text2image": 1}, 4, latents_cache=cache)
    for position in range(6):
        batch = stream.batch_at(position)
        assert "pixel_values" not in batch and batch["latents"].shape == (4, 8, 8, tiny_model.config.token_dim)
    for reason in ("too_small", "bad_aspect", "unreadable_image", "bad_record"):  # the stream's filters still apply
        assert stream.stats[reason] > 0, reason
    batch.pop("task")
    with torch.no_grad():
        loss = tiny_model.text_to_image_loss(**batch, generator=torch.Generator().manual_seed(0)).loss
    assert torch.isfinite(loss)
