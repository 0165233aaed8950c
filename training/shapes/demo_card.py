"""The model card of the embedded Shapes demo model, written for its users: what it is, how to use it, what it
scores, what it cannot do; then, for the curious, the recipe and its wall times.

    python -m training.shapes.demo_card --folder pipelines/default_model --eval shapes_eval.json \\
        --timings runs/shapes/timings.json [--canvas canvas] [--note "$(cat note.md)"]

Every number it states is read from files the recipe wrote (evaluation JSONs, measured timings) or from the note
(training/configs/shapes/card_inputs/note.md for the shipped card), so the card cannot claim numbers nobody measured;
what the model's world holds (colours, shapes) is read from training/shapes/world.py, which the data step drew the
training set from, and its words from the folder's tokenizer.json (world.extended_vocabulary() without one).

`--canvas` is a folder of `harmon eval shapes --task T --json` files named T.json: inpaint, outpaint and vary give
the card's "Starting from a picture" table, edit its "Editing" table and phrasing its "Free phrasing" table; a
missing file leaves its part out.

The note is Markdown. Its text before any `## ` heading goes under the card's opening paragraph (a one-line status);
a part headed `## What it scores` (or another heading of NOTE_SECTIONS) goes at the end of the card's section of that
name.
"""

import argparse
import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from modeling_harmon.atomic_files import atomic_path
from training.shapes import world


# The commands that reproduce the model, from an empty checkout (one command at a time, on both cores of the 2-core
# machine, the VAE on one thread, which gives the shipped VAE bit for bit; every training command resumes with
# `--resume`). training/configs/shapes/README.md shows the same block (a test keeps the two equal).
RECIPE_COMMANDS = """\
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1
python -m training.shapes.make_data --output runs/shapes/data --scenes 20000 --seed 0   # images, jsonl, tokenizer
OMP_NUM_THREADS=1 python -m training.shapes.train_vae --output runs/shapes/vae --steps 3000  # AutoencoderKL, f=4
python -m training.train --config training/configs/shapes/stage1_alignment.yaml
python -m training.train --config training/configs/shapes/stage2_joint.yaml
python -m training.train --config training/configs/shapes/stage3_high_quality.yaml
python -m training.shapes.export_default --model runs/shapes/stage3/final --output runs/shapes/stage3_bf16 \\
    --temperature 0.05 --guidance-scale 1.25 --num-iter 6                  # the drawing weights, bf16
python -m training.shapes.make_data --output runs/shapes/data_edit --scenes 20000 --seed 0 --free-phrasing \\
    --edits 20000 --scene-captions 12000                                   # edits, free wordings, the new words
python -m training.train --config training/configs/shapes/stage4_understanding.yaml   # the understanding adapter
python -m training.shapes.export_default --model runs/shapes/stage3_bf16 --output pipelines/default_model --overwrite \\
    --understanding-adapter runs/shapes/stage4_understanding/final --trained-tasks text2image image2text edit \\
    --temperature 0.05 --guidance-scale 1.25 --num-iter 6 --edit-mode describe --prompt-mode auto \\
    --reading-prompt "describe the image." --candidates 4
python -m training.shapes.write_floor --folder pipelines/default_model                  # CI regression floor
harmon eval shapes --n 540 --json shapes_eval.json
harmon eval shapes --task inpaint --n 240 --json canvas/inpaint.json     # also --task outpaint (--n 240), vary (--n 120)
harmon eval shapes --task edit --n 240 --json canvas/edit.json           # also --task phrasing (--n 180)"""


# The card's sections that the note can add text to (in the card's order).
NOTE_SECTIONS = ("What it scores", "What it cannot do", "Reproduce it", "Wall time")

# The static "How to use it" section (a test keeps the shipped card's equal to it). Not an f-string: the Python
# snippet has braces.
USAGE = """## How to use it

From the command line (installed with this package; no download, no network):

```bash
harmon generate "a red circle on the left" -o out.png && harmon ask out.png "what color is the circle?"
```

`harmon generate` writes a 32 x 32 PNG (`--seed` and `-n` give other and more drawings); `harmon ask` prints a
one-word answer (here `red`).

In Python, `harmon_pipelines.default_model.load_default_model()` returns the model and its tokenizer:

```python
import torch
from transformers import pipeline
from harmon_pipelines.default_model import load_default_model, load_processor  # also registers "text-to-image"

model, tokenizer = load_default_model()  # the packaged Shapes model, on the CPU, in fp32
draw = pipeline("text-to-image", model=model, tokenizer=tokenizer)  # sampling defaults stored with the model
image = draw("a blue square above a green triangle", generator=torch.Generator().manual_seed(0))[0]  # PIL, 32 x 32

processor = load_processor(None, model, tokenizer)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is on the top?"}]}]
inputs = processor(images=image, text=processor.apply_chat_template(messages, add_generation_prompt=True),
                   return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=10, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:]).strip())  # square
```

To publish it on the Hub:

```bash
harmon push "$(python -c 'from harmon_pipelines.default_model import DEFAULT_MODEL_DIR; print(DEFAULT_MODEL_DIR)')" \\
    --repo-id your-namespace/harmon-shapes
```

The packaged folder leaves out the remote code and the diffusers components (`model/`, `tokenizer/`,
`model_index.json`) to keep the package small; `harmon push` writes them into a temporary copy before it uploads, so
the published repo loads through `AutoModel`, both `pipeline()` tasks and `DiffusionPipeline` with
`trust_remote_code=True`."""


def _fraction(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _hardware(evaluation: dict) -> str:
    """The card's "on N CPU threads" (or "on cuda:0") from the evaluation's `hardware`; nothing for files written
    before it was recorded, rather than a guess."""
    hardware = evaluation.get("hardware")
    if not hardware:
        return ""
    processor = f" ({hardware['processor']})" if hardware.get("processor") else ""
    if hardware["device"] != "cpu":
        return f" on {hardware['device']}{processor}"
    threads = hardware["threads"]
    return f" on {threads} CPU thread{'s' if threads != 1 else ''}{processor}"


def _generation_table(generation: dict) -> str:
    rows = [
        "| overall | single object | two objects | counting | colours | position | colour attribution |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("overall", "single_object", "two_object", "counting", "colors", "position", "color_attr")
    rows.append("| " + " | ".join(_fraction(generation.get(key)) for key in keys) + " |")
    attributes = generation.get("attributes") or {}
    held = generation.get("held_out") or {}
    lines = "\n".join(rows)
    # Three decimals for the attributes: their goals (e.g. colour 0.97) sit where two decimals would round across.
    lines += "\n\nPer attribute: " + ", ".join(f"{key} {_fraction(value, 3)}" for key, value in attributes.items())
    if held:
        lines += "\n\nHeld-out (colour, shape) combinations: " + ", ".join(
            f"{key} {_fraction(value)}" for key, value in held.items() if not isinstance(value, dict)
        )
        held_attributes = held.get("attributes") or {}
        if held_attributes:
            lines += "; per attribute: " + ", ".join(
                f"{key} {_fraction(value, 3)}" for key, value in held_attributes.items()
            )
    return lines


def split_note(note: str) -> dict[str, str]:
    """The note's parts: "" (its text before any `## ` heading) and one per `## Heading` (one of NOTE_SECTIONS),
    each stripped; a heading inside a fenced code block is text."""
    parts, current, fenced = {"": []}, "", False
    for line in note.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            current = line[3:].strip()
            if current not in NOTE_SECTIONS:
                raise ValueError(
                    f"the note's heading {line!r} names no section the note can add to; use one of: "
                    + ", ".join(f"'## {name}'" for name in NOTE_SECTIONS)
                )
            if current in parts:
                raise ValueError(f"the note has the heading {line!r} twice")
            parts[current] = []
            continue
        parts[current].append(line)
    return {name: "\n".join(lines).strip() for name, lines in parts.items()}


def _words(items, conjunction: str = "and") -> str:
    items = [f"{item}" for item in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {conjunction} " + items[-1]


def _percent_wrong(value) -> str:
    return "n/a" if value is None else f"{round(100 * (1 - value))}%"


def tokenizer_words(folder: Path) -> list[str] | None:
    """The world's words (world.extended_vocabulary(), in its order) that `folder`'s word-level tokenizer.json knows,
    so the card lists what the packaged model reads; None without such a file."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    vocab = json.loads(path.read_text()).get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        return None
    return [word for word in world.extended_vocabulary() if word.isalpha() and word in vocab]


def _default_words() -> list[str]:
    return [word for word in world.extended_vocabulary() if word.isalpha()]


def _limits(evaluation: dict, words: list[str] | None = None) -> str:
    """The "What it cannot do" list; the world's contents come from training/shapes/world.py, its `words` from the
    model's tokenizer (default: world.extended_vocabulary()), the error rates from the evaluation."""
    words = _default_words() if words is None else words
    relations = _words((f'"{phrase}"' for phrase, _, _ in world.RELATIONS), "or")
    edges = _words((position for position in world.POSITIONS if position != "center"), "or")
    generation, vqa = evaluation.get("generation") or {}, evaluation.get("vqa") or {}
    side = world.IMAGE_SIZE
    if set(words) - set(world.vocabulary()):  # the stage IV tokenizer: trained on free phrasings
        wording = """It was trained on several wordings of each caption, question and edit instruction \
(`training/shapes/phrasings.py`: "a red triangle in the middle", "there is a red triangle in the center", "which \
color is the circle?"); a sentence built another way from these words may be misread."""
    else:
        wording = """The training captions, and ShapesEval's prompts, are worded like "a red circle on the left", "a \
blue square above a green triangle" and "two yellow circles"."""
    return f"""- **Only the Shapes world.** It knows {len(world.COLORS)} colours ({_words(world.COLORS)}), \
{len(world.SHAPES)} shapes ({_words(world.SHAPES)}) and scenes of three kinds: one object (on the {edges}, or in \
the center), two objects of different colours and shapes, one {relations} the other, or two identical objects \
("two yellow circles"). It cannot draw or recognise any other object, more than \
{world.NUMBER_WORDS[max(world.NUMBER_WORDS)]} objects, a background other than the plain light grey one, textures, \
sizes or styles.
- **Only its vocabulary.** The tokenizer is word-level over the world's {len(words)} words (lower-cased, punctuation \
split off): {", ".join(f"`{word}`" for word in words)}. Any other word (a synonym such as "ball", the spelling \
"colour", a number such as "three") becomes `<unk>`: `harmon generate`, `harmon ask` and `harmon edit` print a \
one-line warning naming it, and the model still draws, or answers with a word of its world, but what that word \
asked for is lost. {wording}
- **Only {side} x {side} pixels.** It was trained and scored at {side} px only; other `--size` values are untrained, \
and `harmon ask` resizes every image to {side} x {side}.
- **No photos or other pictures.** It has seen only flat renders of this world. It answers a question with one word \
of that world (a colour, a shape, a position, a number, yes or no) and a request to describe the image ("Describe \
the image in detail.") with a caption in the world's words; captions are not scored here, and it does not reason or \
chat.
- **It makes mistakes inside its world too**: about {_percent_wrong(generation.get("overall"))} of the ShapesEval \
prompts come out wrong in some attribute ({_percent_wrong(generation.get("single_object"))} of the one-object \
ones, {_percent_wrong(generation.get("two_object"))} of the two-object ones), and about \
{_percent_wrong(vqa.get("accuracy"))} of the questions are answered wrong.
- **Other sampling settings were not what was scored.** The scores are for the stored defaults; on this model, \
stronger guidance than the default scored lower (`training/configs/shapes/README.md`).
- **It says nothing about the paper's Harmon.** It is a toy trained on a 2-core CPU (wall time below); ShapesEval \
scores do not compare with GenEval or VQA benchmark scores of real models."""


def _score(score: dict) -> str:
    return f"{score['value']:.2f} ({score['count']}/{score['n']}, SE {score['se']:.2f})"


def _canvas_scores(canvas: dict) -> str:
    """The "Starting from a picture" part of "What it scores": `canvas` holds the JSON of `harmon eval shapes --task
    inpaint|outpaint|vary` under those names (any may be missing)."""
    rows = []
    if "inpaint" in canvas:
        inpaint = canvas["inpaint"]
        kept = _score(inpaint["kept"])
        rows.append(
            f"| inpainting: one object of a two-object scene recoloured or reshaped | {_score(inpaint['success'])} | "
            f"{_score(inpaint['text_to_image'])} | other object kept: {kept}; unmasked PSNR "
            f"{inpaint['psnr_unmasked_db']:.1f} dB raw, exact with the default paste-back (success then "
            f"{_score(inpaint['success_with_paste_back'])}) |"
        )
    if "outpaint" in canvas:
        outpaint = canvas["outpaint"]
        rows.append(
            f"| outpainting: the missing half of a two-object scene | {_score(outpaint['success'])} | "
            f"{_score(outpaint['text_to_image'])} | |"
        )
    if "vary" in canvas:
        for strength, scores in canvas["vary"]["strengths"].items():
            rows.append(
                f"| variations at strength {strength}: the source scene still read | {_score(scores['preserved'])} | "
                f"| pairs distinct: {_score(scores['distinct'])} |"
            )
    if not rows:
        return ""
    return (
        "\n\nStarting from a picture (`harmon eval shapes --task inpaint|outpaint|vary`, seed 0, the stored sampling "
        "settings, the MAR iterations scaled by the share of tokens drawn; success: the checker reads what the prompt "
        "asks for; text-to-image: the same prompts and seeds drawn from nothing):\n\n"
        "| task | success | text-to-image | |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\nThe model was never "
        "trained to inpaint: it saw 70-100 % of a scene's tokens masked, never a quarter, which is why inpainting "
        "falls short of drawing from nothing."
    )


def _maybe_score(score: dict | None) -> str:
    """`_score`, or a dash where there is nothing to score (preservation of moves and swaps, which touch every
    object)."""
    return "–" if score is None else _score(score)


def _settings_phrase(settings: dict) -> str:
    if not settings:
        return "the stored sampling settings"
    return "the stored sampling settings but " + ", ".join(f"`{key}={value}`" for key, value in settings.items())


# The rows of the editing table: by_group's keys, as a reader would name them.
EDIT_GROUPS = {
    "seen": "seen instructions",
    "held_out_combo": "held-out (operation, colour, shape) combinations",
    "held_out_phrasing": "held-out instruction phrasings",
}


def _edit_scores(edit: dict | None) -> str:
    """The "Editing" part of "What it scores", from the JSON of `harmon eval shapes --task edit` (None: left out)."""
    if not edit:
        return ""

    keys = ("success", "preservation", "unchanged")
    keys += tuple(key for key in ("description", "reading") if edit.get(key))

    def row(name: str, scores: dict) -> str:
        cells = (_maybe_score(scores.get(key)) for key in keys)
        return f"| {name} | " + " | ".join(cells) + " |"

    rows = [row(operation, scores) for operation, scores in edit.get("by_operation", {}).items()]
    rows += [row(EDIT_GROUPS.get(name, name), scores) for name, scores in edit.get("by_group", {}).items()]
    rows.append(row("**all**", edit))
    warning = f"\n\nThe evaluation recorded: {edit['edit_warning']}" if edit.get("edit_warning") else ""
    described = ""
    if edit.get("edit_mode") == "describe":
        described = (
            '. The model edits by describing (its stored `edit_mode` is "describe"): it answers the instruction '
            "about the picture with the edited scene's caption and draws that caption; description: that text is "
            "the instructed scene's caption, so a miss with a right description was misdrawn, one with a wrong "
            "description misread"
        )
        if edit.get("reading"):
            described += (
                "; reading: asked first what the source shows (its stored `reading_prompt`), the model wrote "
                "the source's caption, so a wrong description with a right reading was misrewritten"
            )
    return (
        f"\n\nEditing (`harmon eval shapes --task edit`, {edit['n']} instructions of seed {edit['seed']}, "
        f"{_settings_phrase(edit.get('settings') or {})}, {edit['seconds_per_item']:.2f} s per edit). Success: the "
        "checker reads the instructed scene in the output; preservation: every object the instruction does not touch "
        "is still there with its colour, shape and position (– for moves and swaps, which touch every object); "
        "unchanged: the checker still reads the source scene, no edit made (lower is better)"
        + described
        + ":\n\n| edit | "
        + " | ".join(keys)
        + " |\n|---|"
        + "---|" * len(keys)
        + "\n"
        + "\n".join(rows)
        + warning
        + "\n\n"
        'To edit a picture: `harmon edit IMAGE "make the circle blue" -o out.png`. Edits drawn by this model: '
        "docs/edit.png in the repository."
    )


def _phrasing_scores(phrasing: dict | None) -> str:
    """The "Free phrasing" part of "What it scores", from the JSON of `harmon eval shapes --task phrasing` (None:
    left out)."""
    if not phrasing:
        return ""
    columns = ("canonical", "seen", "held_out")
    rows = [
        f"| {name} | " + " | ".join(_maybe_score((phrasing.get(key) or {}).get(column)) for column in columns) + " |"
        for name, key in (("text-to-image", "generation"), ("VQA", "vqa"))
    ]
    return (
        f"\n\nFree phrasing (`harmon eval shapes --task phrasing`, {phrasing['n']} scenes and questions of seed "
        f"{phrasing['seed']}, each in its canonical wording, a reworded one seen in training and a held-out one, with "
        "the same images and seeds, so the columns differ in wording alone; text-to-image: the checker reads the "
        "scene; VQA: exact match). Held-out phrasings are new sentence structures of known words, never trained on."
        "\n\n| task | canonical | seen rewording | held-out rewording |\n|---|---|---|---|\n" + "\n".join(rows)
    )


def render_card(
    evaluation: dict,
    timings: dict,
    note: str = "",
    canvas: dict | None = None,
    words: list[str] | None = None,
) -> ModelCard:
    """The card. `canvas`: the JSONs of `harmon eval shapes --task T` by T (see the module docstring); `words`: the
    world's words the model's tokenizer knows (default: world.extended_vocabulary()'s)."""
    generation, vqa, settings = evaluation.get("generation") or {}, evaluation.get("vqa") or {}, evaluation["settings"]
    notes = split_note(note)
    canvas = canvas or {}
    words = _default_words() if words is None else words

    def with_note(section: str, text: str) -> str:
        return f"{text}\n\n{notes[section]}" if notes.get(section) else text

    by_type = ", ".join(f"{key} {_fraction(value)}" for key, value in (vqa.get("by_type") or {}).items())
    timing_lines = "\n".join(f"| {name} | {seconds / 60:.1f} min |" for name, seconds in timings.items())
    timing_lines += f"\n| **total** | **{sum(timings.values()) / 60:.1f} min** |"
    sampling = ", ".join(f"`{key}={value}`" for key, value in settings.items())
    held_out = _words(f"{color} {shape}" for color, shape in sorted(world.HELD_OUT_PAIRS))
    side = world.IMAGE_SIZE
    front_matter = ModelCardData(
        library_name="transformers",
        pipeline_tag="any-to-any",
        license="apache-2.0",
        tags=["harmon", "toy", "shapes", "text-to-image", "image-text-to-text"],
    ).to_yaml()
    intro = f"""# Harmon Shapes demo model

A tiny Harmon trained from scratch, on a CPU, by this repository's own recipe on the toy Shapes world: one or two \
coloured circles, squares and triangles on a plain background. One model does both of Harmon's tasks: it draws such \
a scene from a sentence ("a blue square above a green triangle") and answers questions about one ("what color is the \
circle?"). Images are {side} x {side} pixels and the text is a word-level vocabulary of the world's {len(words)} \
words. It is the package's embedded default model (`harmon generate`, `harmon ask` and the pipelines use it when no \
`--model` is given), and it shows that the whole system works end to end: one MAR encoder shared by understanding \
and generation, a Qwen2-style LLM, a diffusion-MLP head and a KL VAE of stride 4. It knows nothing outside that world."""
    if notes[""]:
        intro += "\n\n" + notes[""]
    scores = f"""## What it scores

ShapesEval: {evaluation["n"]} prompts and questions of seed {evaluation["seed"]}, the model in fp32.

Generation (the share of prompts whose image a model-free checker, reading colour, shape, position and count from \
the pixels, finds right in everything the prompt asks for):

{_generation_table(generation)}

The held-out combinations ({held_out}) never appear in the training data: the model draws them from colours \
and shapes it saw in other pairs. (The VQA questions are about training-split scenes.)

VQA (exact match on questions about rendered scenes): accuracy {_fraction(vqa.get("accuracy"))}; by type: {by_type}.

Sampling settings: {sampling}; {evaluation["seconds_per_image"]:.2f} s per image{_hardware(evaluation)}.\
{_canvas_scores(canvas)}{_edit_scores(canvas.get("edit"))}{_phrasing_scores(canvas.get("phrasing"))}"""
    reproduce = f"""## Reproduce it

For the curious: the commands that trained these weights, in a checkout of the repository (one command at a time, \
each training command resumable with `--resume`):

```bash
{RECIPE_COMMANDS}
```

The stage configs and the deviations from the paper's stages are explained in `training/configs/shapes/README.md` \
and in the configs themselves; that file also tells how the recipe and the sampling defaults were chosen."""
    wall_time = f"""## Wall time

Each step of the block above on a 2-core CPU, one command at a time on both cores (the VAE on one thread):

| step | wall time |
|---|---|
{timing_lines}"""
    sections = [
        intro,
        USAGE,
        with_note("What it scores", scores),
        with_note("What it cannot do", "## What it cannot do\n\n" + _limits(evaluation, words)),
        with_note("Reproduce it", reproduce),
        with_note("Wall time", wall_time),
    ]
    return ModelCard(f"---\n{front_matter}\n---\n\n" + "\n\n".join(sections) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="the model folder: its tokenizer.json, its card")
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument(
        "--canvas",
        type=Path,
        default=None,
        help="folder of `harmon eval shapes --task T --json T.json` files: inpaint, outpaint, vary, edit, phrasing "
        "(each optional)",
    )
    parser.add_argument(
        "--note",
        default="",
        help="Markdown: a status line for under the opening paragraph, then "
        "optional parts headed '## <section>' (one of NOTE_SECTIONS) for the end of those sections",
    )
    args = parser.parse_args(argv)
    card = render_card(
        json.loads(args.eval.read_text()),
        json.loads(args.timings.read_text()),
        args.note,
        {path.stem: json.loads(path.read_text()) for path in sorted(args.canvas.glob("*.json"))}
        if args.canvas
        else None,
        tokenizer_words(args.folder),
    )
    with atomic_path(args.folder / "README.md") as temporary:
        card.save(temporary)


if __name__ == "__main__":
    main()
