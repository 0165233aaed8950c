"""Package a trained Shapes Harmon as the embedded default model (`pipelines/default_model/`, bf16 safetensors).

    python -m training.shapes.export_default --model runs/shapes/stage3/final --output pipelines/default_model

The folder is the usual Hub layout minus the remote-code `.py` files (the package's own classes load it, and
copies of the code would go stale) and minus the diffusers component copies (`model/`, `tokenizer/`), which
would double the size of the wheel. Its generation defaults are the sampling settings ShapesEval was measured with.
"""

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from modeling_harmon.output_folders import OutputFolderError, check_output_folder, replace_folder


# Sampling settings of the demo model (stored as its `generation_config.image_generation`).
DEMO_IMAGE_GENERATION = {
    "num_iter": 16,
    "guidance_scale": 3.0,
    "temperature": 1.0,
    "num_sampling_steps": 50,
    "edit_mode": "direct",
    "prompt_mode": "direct",
    "candidates": 1,
}
# Named presets over those defaults (`generation_config.image_generation_presets`; `sampling="fast"`, `--sampling fast`).
# "fast", chosen on ShapesEval seed 1 (benchmarks/NOTES.md, "The demo model's fast preset"). A model that ranks its
# drawings (a stored `candidates` above 1): half the drawings at 25 head steps (4 of 50 -> 2 of 25 kept the default's
# score there while drawing 3.5x faster). One drawing per image: 10 head steps (3.6x faster, 2.4 points lower).


def demo_presets(candidates: int) -> dict:
    """The named sampling presets of an export whose stored count of drawings is `candidates`."""
    if candidates > 1:
        return {"fast": {"num_sampling_steps": 25, "candidates": max(1, candidates // 2)}}
    return {"fast": {"num_sampling_steps": 10}}


# Where the exported folder keeps an understanding adapter (`config.understanding_adapter`).
ADAPTER_SUBFOLDER = "understanding_adapter"


def export(
    model_dir: str,
    output: Path,
    x0_clamp: float | None,
    overwrite: bool = False,
    understanding_adapter: str | None = None,
    trained_tasks: list[str] | None = None,
    reading_prompt: str | None = None,
    **sampling,
) -> Path:
    """Write the bf16 folder; `sampling` overrides entries of DEMO_IMAGE_GENERATION (e.g. temperature=0.8). An
    existing `output` is replaced only if a harmon writer made it and `overwrite` is set. `understanding_adapter`: a
    LoRA run's folder (adapter, tokenizer) trained on `model_dir` grown to that tokenizer with `new_token_init: unk`;
    the export grows the table the same way and keeps the adapter in `understanding_adapter/`. `trained_tasks`: the
    tasks the exported folder serves (`config.trained_tasks`; an adapter run's folder holds no model config), else the
    model's. `reading_prompt`: the question the adapter was trained to answer about an edit's source before the
    instruction (`config.reading_prompt`; make_data's `EDIT_READING_PROMPT` for `edit_readings.jsonl`)."""
    from harmon_pipelines.hub import write_hub_files

    inputs = [model_dir] + ([understanding_adapter] if understanding_adapter else [])
    check_output_folder(output, overwrite, inputs)

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=False, understanding_adapter=None).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if understanding_adapter:
        tokenizer = _attach_understanding_adapter(model, model_dir, Path(understanding_adapter))
    if trained_tasks is not None:
        model.config.trained_tasks = list(trained_tasks)
    if reading_prompt is not None:
        model.config.reading_prompt = reading_prompt
        model.config._validate_harmon()
    model = model.to(torch.bfloat16)
    settings = dict(getattr(model.generation_config, "image_generation", None) or {})
    unknown = sorted(set(sampling) - set(DEMO_IMAGE_GENERATION))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; allowed: {sorted(DEMO_IMAGE_GENERATION)}.")
    settings.update(DEMO_IMAGE_GENERATION, x0_clamp=x0_clamp)
    settings.update({key: value for key, value in sampling.items() if value is not None})
    model.generation_config.image_generation = settings
    presets = demo_presets(settings["candidates"])
    model.generation_config.image_generation_presets = presets
    for preset in (None, *presets):  # fails here, naming the setting, rather than at first use
        if model.image_generation_settings(preset).candidates > 1 and not model.config.reading_prompt:
            raise ValueError("candidates > 1 ranks drawings by the model's reading: give --reading-prompt too.")
    # transformers replaces a generation config marked as derived from the model config when it loads one, which
    # would drop these settings.
    model.generation_config._from_model_config = False
    with replace_folder(output, "training.shapes.export_default", overwrite, inputs) as staging:
        write_hub_files(staging, model, tokenizer)
        for path in list(staging.glob("*.py")) + [
            staging / "model",
            staging / "tokenizer",
            staging / "model_index.json",
        ]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    size = sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
    print(f"exported {output} ({size / 2**20:.1f} MiB)")
    return output


def _attach_understanding_adapter(model, model_dir: str, adapter_dir: Path):
    """Grow `model`'s vocabulary to the adapter run's tokenizer (new rows: the unknown token's, as the run started)
    and load its adapter as the model's understanding adapter; returns the run's tokenizer."""
    from modeling_harmon.modeling_harmon_adapters import UNDERSTANDING_ADAPTER

    from ..model_init import _grow_vocabulary, _tokenizer_with_image_token

    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"--understanding-adapter {adapter_dir}: no adapter_config.json there (a LoRA run's folder).")
    old = _tokenizer_with_image_token(model_dir)
    grown = _grow_vocabulary(model, old, _tokenizer_with_image_token(str(adapter_dir)), init="unk")
    model.load_adapter(str(adapter_dir), adapter_name=UNDERSTANDING_ADAPTER, is_trainable=False)
    model.config.understanding_adapter = ADAPTER_SUBFOLDER
    return grown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace --output if a harmon writer made it")
    parser.add_argument(
        "--x0-clamp",
        type=float,
        default=7.0,
        help="clamp of the head's x0 prediction, in scaled latents (the Shapes VAE's latents reach |z| ~ 6.9)",
    )
    parser.add_argument("--temperature", type=float, default=None, help="diffusion-head noise scale (default: 1.0)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: 3.0")
    parser.add_argument("--num-iter", type=int, default=None, help="default: 16")
    parser.add_argument("--head-steps", type=int, default=None, help="diffusion-head steps (default: 50)")
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="drawings per image, the best-read kept (needs --reading-prompt; default: 1)",
    )
    parser.add_argument(
        "--edit-mode",
        choices=("direct", "describe"),
        default=None,
        help="how the model follows an edit instruction by default: the way its recipe trained it (default: direct)",
    )
    parser.add_argument(
        "--prompt-mode",
        choices=("direct", "describe", "auto"),
        default=None,
        help="how the model draws a text prompt by default: the way its recipe trained it (default: direct)",
    )
    parser.add_argument(
        "--understanding-adapter",
        default=None,
        help="a LoRA run's final folder trained on --model for understanding only; kept as the model's adapter",
    )
    parser.add_argument(
        "--trained-tasks",
        nargs="+",
        choices=("text2image", "image2text", "text", "edit"),
        default=None,
        help="the tasks the folder serves (config.trained_tasks; default: the model's)",
    )
    parser.add_argument(
        "--reading-prompt",
        default=None,
        metavar="QUESTION",
        help="the question the understanding adapter answers about an edit's source before the instruction "
        "(config.reading_prompt; the adapter of edit_readings.jsonl: 'describe the image.')",
    )
    args = parser.parse_args(argv)
    try:
        export(
            args.model,
            args.output,
            args.x0_clamp,
            args.overwrite,
            understanding_adapter=args.understanding_adapter,
            trained_tasks=args.trained_tasks,
            reading_prompt=args.reading_prompt,
            temperature=args.temperature,
            guidance_scale=args.guidance_scale,
            num_iter=args.num_iter,
            num_sampling_steps=args.head_steps,
            candidates=args.candidates,
            edit_mode=args.edit_mode,
            prompt_mode=args.prompt_mode,
        )
    except (OutputFolderError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
