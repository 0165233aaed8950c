"""The model card of the embedded Shapes demo model: recipe, wall times, ShapesEval scores, the synergy ablation.

    python -m training.shapes.demo_card --folder pipelines/default_model --eval shapes_eval.json \\
        --timings runs/shapes/timings.json [--ablation ablation.json]

Everything it states is read from files the recipe wrote (evaluation JSON, measured timings), so the card cannot
claim numbers nobody measured.
"""

import argparse
import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from modeling_harmon.atomic_files import atomic_path


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
python -m training.shapes.export_default --model runs/shapes/stage3/final --output pipelines/default_model \\
    --overwrite --temperature 0.05 --guidance-scale 1.25 --num-iter 6                    # bf16, sampling defaults
python -m training.shapes.write_floor --folder pipelines/default_model                  # CI regression floor
harmon eval shapes --n 540 --json shapes_eval.json"""

# The synergy ablation's arm (both arms start from stage I): after the recipe, or beside stages II and III with
# OMP_NUM_THREADS=1 for both processes (a 2-thread process beside another one ran 2.7x slower here).
ABLATION_COMMANDS = """\
python -m training.train --config training/configs/shapes/stage2_joint.yaml --model runs/shapes/stage1/final \\
    --output-dir runs/shapes_genonly/stage2 --set "data.ratio={text: 0, image2text: 0, text2image: 11}"
python -m training.train --config training/configs/shapes/stage3_high_quality.yaml \\
    --model runs/shapes_genonly/stage2/final --output-dir runs/shapes_genonly/stage3 \\
    --set "data.ratio={text: 0, image2text: 0, text2image: 22}\""""


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
    rows = ["| overall | single object | two objects | counting | colours | position | colour attribution |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
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


def render_card(evaluation: dict, timings: dict, ablation: dict | None = None, note: str = "") -> ModelCard:
    generation, vqa, settings = evaluation.get("generation") or {}, evaluation.get("vqa") or {}, evaluation["settings"]
    ablation_text = "Not run yet."
    if ablation:
        ablation_text = "\n".join(
            f"- {name}: generation overall {_fraction(result['generation']['overall'])}, shape "
            f"{_fraction(result['generation']['attributes']['shape'])}" for name, result in ablation.items()
        )
    by_type = ", ".join(f"{key} {_fraction(value)}" for key, value in (vqa.get("by_type") or {}).items())
    timing_lines = "\n".join(f"| {name} | {seconds / 60:.1f} min |" for name, seconds in timings.items())
    timing_lines += f"\n| **total** | **{sum(timings.values()) / 60:.1f} min** |"
    content = f"""---
{ModelCardData(library_name="transformers", pipeline_tag="any-to-any", license="apache-2.0",
               tags=["harmon", "toy", "shapes", "text-to-image", "image-text-to-text"]).to_yaml()}
---

# Harmon Shapes demo model

A small Harmon (one shared MAR encoder for understanding and generation, a Qwen2-style LLM, a diffusion-MLP head,
a KL VAE of stride 4), trained **from scratch on a CPU** with this repository's own training script on the
Shapes world: 32 px images of one or two coloured circles, squares and triangles. It is the package's embedded
default model (`harmon generate`, `harmon ask`, the pipelines without `--model`). It shows that the system works
end to end; it knows nothing outside that world.

{note}

## Use and publish

```bash
harmon generate "a red circle on the left" -o out.png && harmon ask out.png "what color is the circle?"
harmon push "$(python -c 'from harmon_pipelines.default_model import DEFAULT_MODEL_DIR; print(DEFAULT_MODEL_DIR)')" \\
    --repo-id your-namespace/harmon-shapes
```

In Python, `harmon_pipelines.default_model.load_default_model()` returns the model and its tokenizer. The packaged
folder leaves out the remote code and the diffusers components (`model/`, `tokenizer/`, `model_index.json`) to keep
the package small; `harmon push` writes them into a temporary copy before it uploads, so the published repo loads
through `AutoModel`, both `pipeline()` tasks and `DiffusionPipeline` with `trust_remote_code=True`.

## Scores (ShapesEval, {evaluation["n"]} prompts, seed {evaluation["seed"]}, fp32)

Generation (a model-free checker reads colour, shape, position and count from each image):

{_generation_table(generation)}

VQA (exact match on questions about rendered scenes): accuracy {_fraction(vqa.get("accuracy"))}; by type: {by_type}.

Sampling: {json.dumps(settings)}; {evaluation["seconds_per_image"]:.2f} s per image{_hardware(evaluation)}.

## Synergy ablation (same budget: generation-only vs joint)

{ablation_text}

## Training recipe and wall time (2-core CPU, one command at a time on both cores)

| step | wall time |
|---|---|
{timing_lines}

Reproduce, in a checkout of the repository:

```bash
{RECIPE_COMMANDS}
```

The synergy ablation's generation-only arm:

```bash
{ABLATION_COMMANDS}
```

The stage configs and the deviations from the paper's stages are explained in
`training/configs/shapes/README.md` and in the configs themselves.
"""
    return ModelCard(content)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument("--ablation", type=Path, default=None)
    parser.add_argument("--note", default="", help="a status paragraph placed under the title")
    args = parser.parse_args(argv)
    card = render_card(
        json.loads(args.eval.read_text()),
        json.loads(args.timings.read_text()),
        json.loads(args.ablation.read_text()) if args.ablation else None,
        args.note,
    )
    with atomic_path(args.folder / "README.md") as temporary:
        card.save(temporary)


if __name__ == "__main__":
    main()
