"""Write the Shapes world's training data and tokenizer for `python -m training.train`.

    python -m training.shapes.make_data --output runs/shapes/data --scenes 20000 --seed 0

Writes `images/*.png`, `captions.jsonl` (image -> caption, for captioning and text-to-image), `vqa.jsonl` (LLaVA
conversations, several questions per scene) and `tokenizer/` (word-level over the world's vocabulary plus the Qwen
chat specials and `<image>`). Only training-split scenes: the held-out (colour, shape) pairs never appear.

Issue 25 (both off by default, so the shipped model's data comes out byte for byte as before):

    python -m training.shapes.make_data --output runs/shapes/data --scenes 20000 --seed 0 --free-phrasing --edits 20000

`--free-phrasing` words captions and questions in the train phrasings of phrasings.py (the canonical wording half
the time; same scenes, images and answers as without it); `--edits N` also writes `edits.jsonl` (one record a line:
`{"source": "edits/000000_source.png", "instruction": "make the circle blue", "target":
"edits/000000_target.png", "operation": "recolor"}`, image paths relative to the JSONL; train-split edits of
edits.py), `edits/*.png`, `distill_edits.jsonl`, `edit_descriptions.jsonl` (the instruction about the source
answered by the target's caption in reading order: stage IV's describe-then-draw records) and `edit_readings.jsonl`
(the same with the source's caption asked and answered first); `--scene-captions N` writes
`scene_captions.jsonl` and `scenes/*.png` (scenes, mostly of two objects, captioned in reading order);
`--free-phrasing` also writes `distill_phrasing.jsonl` (each wording with the canonical caption it should condition
as) and `prompt_rewrites.jsonl` (the same pairs as text conversations: a wording answered by its canonical caption, for
prompt_mode "describe"). Either flag writes the tokenizer over `world.extended_vocabulary()`.
"""

import argparse
import contextlib
import json
import random
from pathlib import Path

from modeling_harmon.output_folders import OutputFolderError, replace_folder

from .edits import render_edit, sample_edit
from .phrasings import phrase_caption, phrase_question
from .world import extended_vocabulary, questions, render, sample_scene, vocabulary


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Questions per scene, asked as one conversation in a random order. Two alternatives went through stages II and III
# of a fourth recipe run and did no better than this (VQA 0.86): every question of the scene as one conversation (5
# to 9 turns; VQA 0.86, with "is there ...?" at 0.72 against 0.92: a later turn can read its answer off an earlier
# question such as "where is the red square?"), and every question as a one-turn record of its own (VQA 0.83). That
# run also differed in stage I (two processes), so it is not a controlled comparison.
QUESTIONS_PER_SCENE = 3
# The keys of an edit record in edits.jsonl (the `edit` training source's default column names).
EDIT_KEYS = ("source", "instruction", "target")
# Beside edits.jsonl and captions.jsonl: the same edits and captions as conditioning-distillation records (the
# `distill` source kind, training/data/sources.py): the teacher prompt is the canonical caption of the scene to draw.
EDIT_DISTILL, PHRASING_DISTILL = "distill_edits.jsonl", "distill_phrasing.jsonl"
# `--free-phrasing`: each caption's wording answered by the scene's canonical caption, as text-only conversations: what
# a model that draws with prompt_mode "describe" writes before drawing (the understanding adapter's stage trains it).
PROMPT_REWRITES = "prompt_rewrites.jsonl"
# And as understanding records (LLaVA conversations, the `vqa` source kind): the instruction about the source picture
# answered by the target's canonical caption, what a model that edits with edit_mode "describe" writes before drawing.
EDIT_DESCRIPTIONS = "edit_descriptions.jsonl"
# The same edits as two-turn conversations: the model first describes the source picture (`EDIT_READING_PROMPT`,
# answered by its caption in reading order), then answers the instruction with the target's caption. Reading first
# turns the edit into a change of a text the model just wrote (copy the caption, change a word or swap two phrases),
# which a small LLM learns far more easily than the same change read off image tokens. A checkpoint trained on it
# stores the prompt as `config.reading_prompt`, so that `describe_edits` asks it first.
EDIT_READINGS, EDIT_READING_PROMPT = "edit_readings.jsonl", "describe the image."
# `--scene-captions N`: scenes captioned canonically in reading order (`Scene.picture_caption`), three in four with two
# objects (the scenes a description most often gets wrong), for stage IV; drawn from a stream of their own.
SCENE_CAPTIONS, SCENE_CAPTION_STREAM = "scene_captions.jsonl", "canon-two-{seed}"
# Shares of edit distill records whose instruction is dropped, and whose instruction and image both are: the rows
# that text guidance and full guidance of editing compare against (InstructPix2Pix's 5 % each would leave the
# images-only row, the one the default guidance uses, rarely trained).
EDIT_DISTILL_DROPOUT = (0.10, 0.05)


def build_tokenizer(extended: bool = False):
    """Word-level tokenizer over the world's words (plus the chat role names and specials).

    A real BPE vocabulary would waste most of a tiny LLM's embedding table; words the world never uses map to
    `<unk>`. `extended`: also the words of the free phrasings and edit instructions (issue 25), with ids after
    every id of the plain tokenizer (specials included), so those stay the shipped model's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>"] + vocabulary() + ["user", "assistant", "system"]
    if extended:
        known = set(words)
        words += SPECIAL_TOKENS + ["<image>"]
        words += [word for word in extended_vocabulary() if word not in known]
    core = Tokenizer(models.WordLevel(vocab={word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()  # "Generate an image: ..." and "generate" are the same word
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    core.add_special_tokens(SPECIAL_TOKENS + ["<image>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )


def write_data(
    output: Path,
    scenes: int,
    seed: int,
    overwrite: bool = False,
    free_phrasing: bool = False,
    edits: int = 0,
    scene_captions: int = 0,
) -> None:
    """Write the data folder atomically; an existing one is replaced only if a harmon writer made it and `overwrite`
    is set. `free_phrasing` and `edits` (issue 25; see the module docstring) draw from random streams of their own,
    so the scenes and images stay those of the plain data."""
    with replace_folder(output, "training.shapes.make_data", overwrite) as staging:
        (staging / "images").mkdir()
        rng = random.Random(seed)
        wording = random.Random(f"shapes-phrasing-{seed}") if free_phrasing else None
        phrasing = open(staging / PHRASING_DISTILL, "w") if free_phrasing else contextlib.nullcontext()
        restated = open(staging / PROMPT_REWRITES, "w") if free_phrasing else contextlib.nullcontext()
        with (
            open(staging / "captions.jsonl", "w") as captions,
            open(staging / "vqa.jsonl", "w") as vqa,
            phrasing as distill,
            restated as rewrites,
        ):
            for index in range(scenes):
                scene = sample_scene(rng, "train")
                name = f"images/{index:06d}.png"
                render(scene, rng).save(staging / name)
                caption = scene.caption() if wording is None else phrase_caption(scene, wording)[1]
                captions.write(json.dumps({"image": name, "text": caption}) + "\n")
                if distill is not None:  # the wording should condition as the canonical caption does
                    record = {"target": name, "prompt": caption, "sources": [], "teacher_prompt": scene.caption()}
                    distill.write(json.dumps(record) + "\n")
                    turns = [{"from": "human", "value": caption}, {"from": "gpt", "value": scene.caption()}]
                    rewrites.write(json.dumps({"messages": turns}) + "\n")
                asked = questions(scene, rng)
                rng.shuffle(asked)
                turns = []
                for turn, (_, question, answer) in enumerate(asked[:QUESTIONS_PER_SCENE]):
                    if wording is not None:
                        question = phrase_question(question, wording)[1]
                    turns.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
                    turns.append({"from": "gpt", "value": answer})
                vqa.write(json.dumps({"image": name, "conversations": turns}) + "\n")
        if edits:
            write_edit_records(staging, edits, seed)
        if scene_captions:
            write_scene_captions(staging, scene_captions, seed)
        build_tokenizer(extended=free_phrasing or edits > 0).save_pretrained(staging / "tokenizer")


def write_scene_captions(folder: Path, count: int, seed: int) -> Path:
    """Write `count` train-split scenes into `folder` (`scenes/NNNNNN.png`) and `SCENE_CAPTIONS`, one record a line
    `{"image", "text"}` with the scene's caption in reading order; scene i has two objects unless i % 4 == 0 (then one
    object, or two alike to count). Returns the JSONL's path."""
    folder = Path(folder)
    (folder / "scenes").mkdir(parents=True, exist_ok=True)
    rng = random.Random(SCENE_CAPTION_STREAM.format(seed=seed))
    path = folder / SCENE_CAPTIONS
    with open(path, "w") as records:
        for index in range(count):
            kind = "two" if index % 4 else rng.choice(("single", "count"))
            scene = sample_scene(rng, "train", kind)
            name = f"scenes/{index:06d}.png"
            render(scene, rng).save(folder / name)
            records.write(json.dumps({"image": name, "text": scene.picture_caption()}) + "\n")
    return path


def write_edit_records(folder: Path, count: int, seed: int) -> Path:
    """Write `count` train-split edits (edits.py) into `folder`: `edits/NNNNNN_source.png`, `edits/NNNNNN_target.png`
    and `edits.jsonl`, one record a line with the keys `EDIT_KEYS` (source and target: PNG paths relative to the
    JSONL; instruction: one train phrasing) and `operation`. Untouched objects are drawn on the same pixels in
    source and target (`edits.render_edit`). Returns the JSONL's path."""
    folder = Path(folder)
    (folder / "edits").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"shapes-edits-{seed}")
    path = folder / "edits.jsonl"
    dropout = random.Random(f"shapes-edit-distill-{seed}")
    with (
        open(path, "w") as records,
        open(folder / EDIT_DISTILL, "w") as distill,
        open(folder / EDIT_DESCRIPTIONS, "w") as descriptions,
        open(folder / EDIT_READINGS, "w") as readings,
    ):
        for index in range(count):
            edit = sample_edit(rng, "train")
            source, target = (f"edits/{index:06d}_{name}.png" for name in ("source", "target"))
            for image, name in zip(render_edit(edit, rng), (source, target)):
                image.save(folder / name)
            record = {"source": source, "instruction": edit.instruction, "target": target, "operation": edit.operation}
            records.write(json.dumps(record) + "\n")
            distill.write(json.dumps(edit_distill_record(edit, source, target, dropout)) + "\n")
            descriptions.write(json.dumps(edit_description_record(edit, source)) + "\n")
            readings.write(json.dumps(edit_reading_record(edit, source)) + "\n")
    return path


def edit_description_record(edit, source: str) -> dict:
    """The understanding record of an edit: the source picture and the instruction, answered by the target scene's
    canonical caption in reading order (`Scene.picture_caption`: one text per picture) (`EDIT_DESCRIPTIONS`)."""
    return {
        "image": source,
        "conversations": [
            {"from": "human", "value": f"<image>\n{edit.instruction}"},
            {"from": "gpt", "value": edit.target.picture_caption()},
        ],
    }


def edit_reading_record(edit, source: str) -> dict:
    """`edit_description_record` with a reading turn first (`EDIT_READINGS`): `EDIT_READING_PROMPT` about the source
    answered by its caption in reading order, then the instruction answered by the target's."""
    return {
        "image": source,
        "conversations": [
            {"from": "human", "value": f"<image>\n{EDIT_READING_PROMPT}"},
            {"from": "gpt", "value": edit.source.picture_caption()},
            {"from": "human", "value": edit.instruction},
            {"from": "gpt", "value": edit.target.picture_caption()},
        ],
    }


def edit_distill_record(edit, source: str, target: str, rng: random.Random) -> dict:
    """The `distill` record of an edit: the instruction with the source in view should condition the model as the
    target's caption does. With the guidance rows' shares (`EDIT_DISTILL_DROPOUT`) the instruction is dropped (the
    images-only row, which should draw the source as its caption does) or both are (the unconditional row)."""
    draw = rng.random()
    instruction_dropped, both_dropped = EDIT_DISTILL_DROPOUT
    if draw < both_dropped:
        return {"target": target, "prompt": None, "sources": [], "teacher_prompt": None}
    if draw < both_dropped + instruction_dropped:
        return {"target": source, "prompt": None, "sources": [source], "teacher_prompt": edit.source.caption()}
    return {"target": target, "prompt": edit.instruction, "sources": [source], "teacher_prompt": edit.target.caption()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace --output if a harmon writer made it")
    parser.add_argument(
        "--free-phrasing", action="store_true", help="word captions and questions in several phrasings (issue 25)"
    )
    parser.add_argument(
        "--edits", type=int, default=0, metavar="N", help="also write N edit records, edits.jsonl (issue 25)"
    )
    parser.add_argument(
        "--scene-captions",
        type=int,
        default=0,
        metavar="N",
        help=f"also write N scenes captioned in reading order, {SCENE_CAPTIONS} (stage IV; issue 25)",
    )
    args = parser.parse_args(argv)
    for flag, value in (("--edits", args.edits), ("--scene-captions", args.scene_captions)):
        if value < 0:
            parser.error(f"{flag} must be >= 0, got {value}")
    try:
        write_data(
            args.output, args.scenes, args.seed, args.overwrite, args.free_phrasing, args.edits, args.scene_captions
        )
    except OutputFolderError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
