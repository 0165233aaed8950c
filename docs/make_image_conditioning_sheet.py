"""Draw docs/image_conditioning.png: inpainting, outpainting and variations by the embedded Shapes demo model.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python docs/make_image_conditioning_sheet.py

Each row: the input, the mask (grey frame; white = redraw) where there is one, and the outputs, enlarged 4x without
blur (the model draws 32 px). Seeds are fixed, so the sheet is the same on every run of one machine.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps


REPO = Path(__file__).resolve().parent.parent
SCALE, GAP, LABEL = 4, 8, 96


def _big(image: Image.Image, frame: bool = False) -> Image.Image:
    image = image.convert("RGB").resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)
    return ImageOps.expand(image, border=1, fill=(150, 150, 150)) if frame else image


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

    def seeded(seed):
        return torch.Generator().manual_seed(seed)

    scene = text_to_image("a red circle to the left of a blue square", generator=seeded(1)).images[0]
    left = np.zeros((scene.height, scene.width), dtype=np.uint8)
    left[:, : scene.width // 2] = 255
    mask = Image.fromarray(left)
    stride = model.config.vae_stride * model.config.patch_size
    wide, wide_mask = outpaint_canvas(scene, stride, right=16)
    rows = [
        (
            "inpaint",
            [scene, mask],
            [
                pipe(prompt, image=scene, mask_image=mask, generator=seeded(seed)).images[0]
                for prompt, seed in (
                    ("a green triangle to the left of a blue square", 0),
                    ("a yellow square to the left of a blue square", 0),
                )
            ],
        ),
        (
            "outpaint",
            [scene, wide_mask],
            [
                pipe(
                    "a red circle to the left of a blue square", image=wide, mask_image=wide_mask, generator=seeded(s)
                ).images[0]
                for s in (0, 1)
            ],
        ),
        (
            "vary 0.5",
            [scene, None],
            [
                pipe(
                    "a red circle to the left of a blue square", image=scene, strength=0.5, generator=seeded(s)
                ).images[0]
                for s in (0, 1)
            ],
        ),
    ]
    column = 48 * SCALE + GAP
    sheet = Image.new("RGB", (LABEL + 4 * column, len(rows) * (32 * SCALE + 3 * GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    y = GAP
    for name, (source, row_mask), outputs in ((name, inputs, outputs) for name, inputs, outputs in rows):
        draw.text((GAP, y + 16 * SCALE), name, fill="black")
        sheet.paste(_big(source), (LABEL, y))
        if row_mask is not None:
            sheet.paste(_big(row_mask, frame=True), (LABEL + column, y))
        for index, output in enumerate(outputs):
            sheet.paste(_big(output), (LABEL + (2 + index) * column, y))
        y += 32 * SCALE + 3 * GAP
    target = REPO / "docs" / "image_conditioning.png"
    sheet.save(target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
