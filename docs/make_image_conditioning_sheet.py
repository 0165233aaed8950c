"""Draw the contact sheets of image-conditioned generation by the embedded Shapes demo model, one per mode:
docs/inpaint.png, docs/outpaint.png and docs/vary.png.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python docs/make_image_conditioning_sheet.py

Each row: the input, the mask (white = redraw; grey frame) and the output, enlarged 4x without blur (the model draws
32 px), with the prompt beneath. For variations the mask column shows the tokens that were redrawn, read off the
output itself (a kept token's latent equals the input's), so it is what the sampler did, not a re-derivation of its
seeded choice. Seeds are fixed, so the sheets are the same on every run of one machine.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps


REPO = Path(__file__).resolve().parent.parent
SCALE, GAP, LABEL, CAPTION = 4, 8, 112, 16
SCENE = "a red circle to the left of a blue square"


def _big(image: Image.Image, frame: bool = False) -> Image.Image:
    image = image.convert("RGB").resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)
    return ImageOps.expand(image, border=1, fill=(150, 150, 150)) if frame else image


def _half_mask(size: int, side: str) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    if side == "left":
        mask[:, : size // 2] = 255
    else:
        mask[:, size // 2 :] = 255
    return Image.fromarray(mask)


def _sheet(rows: list[tuple[str, Image.Image, Image.Image, Image.Image, str]], path: Path) -> None:
    """rows: (label, input, mask, output, prompt); columns sized to the widest image."""
    column = max(max(row[1].width, row[2].width, row[3].width) for row in rows) * SCALE + 2 * GAP
    heights = [max(row[1].height, row[3].height) * SCALE + CAPTION + 2 * GAP for row in rows]
    sheet = Image.new("RGB", (LABEL + 3 * column, CAPTION + sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((LABEL, 0), "input", fill="black")
    draw.text((LABEL + column, 0), "mask (white = redraw)", fill="black")
    draw.text((LABEL + 2 * column, 0), "output", fill="black")
    y = CAPTION
    for (label, source, mask, output, prompt), height in zip(rows, heights):
        draw.text((GAP, y + source.height * SCALE // 2 - 6), label, fill="black")
        sheet.paste(_big(source), (LABEL, y))
        sheet.paste(_big(mask, frame=True), (LABEL + column, y))
        sheet.paste(_big(output), (LABEL + 2 * column, y))
        draw.text((LABEL, y + max(source.height, output.height) * SCALE + 2), f'"{prompt}"', fill=(60, 60, 60))
        y += height
    sheet.save(path)
    print(path)


def main() -> int:
    sys.path.insert(0, str(REPO))
    from harmon_pipelines import HarmonInpaintPipeline, HarmonPipeline
    from harmon_pipelines.default_model import load_default_model
    from modeling_harmon.modeling_harmon_canvas import outpaint_canvas

    torch.set_num_threads(1)
    model, tokenizer = load_default_model()
    text_to_image = HarmonPipeline(model=model, tokenizer=tokenizer)
    pipe = HarmonInpaintPipeline(model=model, tokenizer=tokenizer)
    for each in (text_to_image, pipe):
        each.set_progress_bar_config(disable=True)
    stride = model.config.vae_stride * model.config.patch_size

    def seeded(seed):
        return torch.Generator().manual_seed(seed)

    scene = text_to_image(SCENE, generator=seeded(1)).images[0]
    other = text_to_image("a green triangle above a yellow square", generator=seeded(2)).images[0]

    inpaint = []
    for label, source, side, prompt in (
        ("recolour", scene, "left", "a green circle to the left of a blue square"),
        ("reshape", scene, "right", "a red circle to the left of a blue triangle"),
        ("new object", scene, "left", "a yellow square to the left of a blue square"),
    ):
        mask = _half_mask(source.width, side)
        output = pipe(prompt, image=source, mask_image=mask, generator=seeded(0)).images[0]
        inpaint.append((label, source, mask, output, prompt))
    _sheet(inpaint, REPO / "docs" / "inpaint.png")

    outpaint = []
    half = scene.crop((0, 0, scene.width // 2, scene.height))  # the left half: the red circle alone
    for label, source, pads, prompt in (
        ("right +16", half, {"right": 16}, SCENE),
        ("right +16, wider", scene, {"right": 16}, SCENE),
        ("top +8, bottom +8", other, {"top": 8, "bottom": 8}, "a green triangle above a yellow square"),
    ):
        canvas, mask = outpaint_canvas(source, stride, **pads)
        output = pipe(prompt, image=canvas, mask_image=mask, generator=seeded(0)).images[0]
        outpaint.append((label, canvas, mask, output, prompt))
    _sheet(outpaint, REPO / "docs" / "outpaint.png")

    vary = []
    known = model.model.encode_images(pipe.image_processor.preprocess(scene).to(model.dtype))
    for strength in (0.3, 0.6, 1.0):
        output = pipe(SCENE, image=scene, strength=strength, generator=seeded(0), output_type="latent").images
        kept = (model.model.latents_to_tokens(output) == known).all(-1)[0]
        mask = Image.fromarray(np.where(kept.numpy(), 0, 255).astype(np.uint8)).resize(scene.size, Image.NEAREST)
        image = pipe(SCENE, image=scene, strength=strength, generator=seeded(0)).images[0]
        vary.append((f"strength {strength}", scene, mask, image, SCENE))
    _sheet(vary, REPO / "docs" / "vary.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
