"""The editing cell of `bench_generate.py --edit`: instruction editing against text-to-image, same model and size.

Why a cell of its own: an edit draws with a context image in the LLM's prompt (its placeholders filled through the
understanding path: VAE encode, MAR encoder, projection) and, with both guidance scales on, runs three row groups per
step (text and image; image only; neither) where text-to-image runs two. Every per-iteration stage should then cost
about 3/2 of text-to-image's, plus the longer prompt in the LLM; this cell measures whether it does, with the same
linear kernels the text-to-image run chose.

The preset models have no tokenizer, and an edit's prompt must be text (the processor puts the images before the
instruction), so the cell uses the package's byte tokenizer and points the random model's `image_token_id` at its
`<image>` id; speed depends on shapes only.
"""

from __future__ import annotations

import torch
from PIL import Image

from modeling_harmon.demo import build_byte_tokenizer


EDIT_INSTRUCTION = "make the circle on the left blue"  # about a sentence of the Shapes world; bytes as tokens


def edit_inputs(model, canvas_image: torch.Tensor, batch: int, image_guidance_scale: float) -> dict:
    """The prompt keywords of the edit cell's `generate_images` calls (in place of text-to-image's prompt ids): the
    instruction, the context image (`canvas_image` (3, H, W) in [0, 1] as a PIL image), `batch` images of it, the
    image guidance, and a tokenizer whose `<image>` id the model is told."""
    tokenizer, image_token_id = build_byte_tokenizer()
    model.config.image_token_id = image_token_id
    pixels = (canvas_image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return {
        "prompt": EDIT_INSTRUCTION,
        "context_images": Image.fromarray(pixels),
        "tokenizer": tokenizer,
        "num_images_per_prompt": batch,
        "image_guidance_scale": image_guidance_scale,
    }


def row_groups(guidance_scale: float, image_guidance_scale: float | None) -> int:
    """Prompt row groups per step (`generate_images(context_images=...)`): 1, 2 (text guidance) or 3 (both)."""
    if image_guidance_scale is not None and image_guidance_scale != 1.0:
        return 3
    return 2 if guidance_scale != 1.0 else 1


def edit_comparison(edit_result: dict, t2i: dict, guidance_scale: float, image_guidance_scale: float) -> dict:
    """The edit cell against the text-to-image run: `ratio` of wall times (`cpu_ratio` of CPU times), per-stage
    ratios, and `rows_ratio`, the row groups of an edit step over text-to-image's (what the per-iteration stages
    should scale by)."""
    t2i_groups = 2 if guidance_scale != 1.0 else 1
    stage_ratios = {
        stage: seconds / t2i["stages"][stage]
        for stage, seconds in edit_result["stages"].items()
        if t2i["stages"].get(stage, 0) > 0
    }
    return {
        **edit_result,
        "t2i_s": t2i["total_s"],
        "t2i_cpu_s": t2i["cpu_s"],
        "ratio": edit_result["total_s"] / t2i["total_s"],
        "cpu_ratio": edit_result["cpu_s"] / t2i["cpu_s"],
        "stage_ratios": stage_ratios,
        "row_groups": row_groups(guidance_scale, image_guidance_scale),
        "rows_ratio": row_groups(guidance_scale, image_guidance_scale) / t2i_groups,
        "same_kernels": edit_result.get("linear_kernels") == t2i.get("linear_kernels"),
    }


def format_edit(edit_result: dict, image_guidance_scale: float) -> str:
    """The edit cell's time against text-to-image's, overall and per stage."""
    if "error" in edit_result:
        return f"edit: failed: {edit_result['error']}"
    stages = ", ".join(
        f"{stage} {seconds:.3f} (x{edit_result['stage_ratios'][stage]:.2f})"
        if stage in edit_result["stage_ratios"]
        else f"{stage} {seconds:.3f}"
        for stage, seconds in edit_result["stages"].items()
    )
    return "\n".join(
        [
            f"edit (one context image, image guidance {image_guidance_scale}, {edit_result['row_groups']} row groups "
            f"per step; x{edit_result['rows_ratio']:.2f} the rows of text-to-image)",
            f"  t2i {edit_result['t2i_s']:.3f} s, edit {edit_result['total_s']:.3f} s: x{edit_result['ratio']:.3f} "
            f"(CPU x{edit_result['cpu_ratio']:.3f}); first call {edit_result['first_call']['total_s']:.3f} s",
            f"  edit stages (s, x of t2i's): {stages}",
            f"  same linear kernels as text-to-image: {edit_result['same_kernels']}",
        ]
    )
