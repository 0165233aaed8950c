"""The canvas image-conditioned generation starts from: an init image as pixels, and which of its tokens to redraw.

MAR draws tokens, not pixels, so a pixel mask has to become a token mask. The rule (docs/adr-0003-image-inputs.md):
a pixel is masked when its mask value is at least half of white (diffusers' convention: white = redraw), and a
token is redrawn when ANY pixel of its stride x stride cell is masked. A token that is only partly inside the mask is
redrawn whole, so the redrawn region covers the mask (never less): a thin brush stroke still redraws what it
touches, and what the user painted over is never kept.

Images are PIL images (any mode: 16-bit and float ones are scaled, alpha dropped, as the processor does), or
tensors / arrays of shape (3, H, W) / (B, 3, H, W) in [0, 1] (diffusers' convention for tensors is [-1, 1]: pass
those with `pixels_in_minus_one_to_one=True`). Masks are PIL images of any mode (RGB and RGBA are converted to grey;
RGBA's alpha is not read), or tensors / arrays (H, W) / (B, 1, H, W) in [0, 1].

Uploaded with the model code (remote code): it imports only torch, numpy and PIL.
"""

import math

import numpy as np
import torch
from PIL import Image


def _as_batch(value, name: str, channels: int) -> torch.Tensor:
    """(B, channels, H, W) float32 in [0, 1] from a PIL image, a list of them, or a tensor / array."""
    if isinstance(value, Image.Image):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(item, Image.Image) for item in value):
            raise ValueError(
                f"{name} must be a PIL image, a list of PIL images or a tensor, got {type(value).__name__}."
            )
        arrays = [np.asarray(_pil(item, name, channels), dtype=np.float32) / 255.0 for item in value]
        if len({array.shape for array in arrays}) != 1:
            raise ValueError(f"{name}: the images of a list must share one size, got {[a.shape[:2] for a in arrays]}.")
        tensor = torch.from_numpy(np.stack(arrays))
        return tensor.permute(0, 3, 1, 2) if channels == 3 else tensor[:, None]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a PIL image, a list of PIL images or a tensor, got {type(value).__name__}.")
    tensor = value.detach().float().cpu()
    if channels == 1 and tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[1] != channels:
        expected = "(H, W) or (B, 1, H, W)" if channels == 1 else "(3, H, W) or (B, 3, H, W)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}.")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains non-finite (NaN/inf) values.")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name} holds values in [{low:g}, {high:g}]; it must lie in [0, 1].")
    return tensor


def _pil(image: Image.Image, name: str, channels: int) -> Image.Image:
    """RGB (images) or L (masks), with high bit depths scaled rather than clipped."""
    from .image_processing_harmon import to_rgb_image

    rgb = to_rgb_image(image)
    return rgb if channels == 3 else rgb.convert("L")


def init_pixels(init_image, pixels_in_minus_one_to_one: bool = False) -> torch.Tensor:
    """`init_image` as (B, 3, H, W) float32 pixels in [-1, 1], the VAE's range."""
    if pixels_in_minus_one_to_one and isinstance(init_image, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(init_image).float()
        return _as_batch((tensor + 1) / 2, "init_image", 3) * 2 - 1
    return _as_batch(init_image, "init_image", 3) * 2 - 1


def redraw_tokens(mask_image, height: int, width: int, stride: int) -> torch.BoolTensor:
    """(B, rows, cols) bool, True = redraw: a token is redrawn if any pixel of its cell is at least half white."""
    mask = _as_batch(mask_image, "mask_image", 1)
    if tuple(mask.shape[-2:]) != (height, width):
        raise ValueError(f"mask_image is {mask.shape[-1]}x{mask.shape[-2]} pixels but the image is {width}x{height}.")
    masked = (mask >= 0.5).float()
    return torch.nn.functional.max_pool2d(masked, kernel_size=stride, stride=stride)[:, 0].bool()


def random_redraw_tokens(count: int, rows: int, cols: int, generators) -> torch.BoolTensor:
    """(B, rows, cols) bool with exactly `count` tokens to redraw per image, at positions drawn from each image's
    generator (one generator per image; `None` entries use torch's global one)."""
    seq_len = rows * cols
    masks = []
    for generator in generators:
        order = torch.randperm(seq_len, generator=generator, device=generator.device if generator else "cpu").cpu()
        row = torch.zeros(seq_len, dtype=torch.bool)
        row[order[:count]] = True
        masks.append(row.reshape(rows, cols))
    return torch.stack(masks)


def redraw_count(strength: float, seq_len: int) -> int:
    """Tokens redrawn for `strength` (variations): round(strength x tokens), at least one unless strength is 0."""
    return 0 if strength == 0 else max(1, min(seq_len, math.floor(strength * seq_len + 0.5)))


def scaled_iterations(num_iter: int, num_unknown: int, seq_len: int) -> int:
    """MAR iterations for drawing `num_unknown` of `seq_len` tokens: the full-image count scaled by the share drawn
    (as diffusers scales denoising steps by `strength`), rounded up, at least 1 and at most the tokens drawn."""
    return max(1, min(num_unknown, math.ceil(num_iter * num_unknown / seq_len)))


def outpaint_canvas(image: Image.Image, stride: int, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0):
    """(canvas, mask) to outpaint `image` by the given pixels on each side: the image on a larger canvas (the padding
    repeats its edge pixels, so the VAE sees no hard border next to the kept tokens) and a mask white over the
    padding. Each padding must be a multiple of the token `stride`, so no token mixes kept and new pixels."""
    pads = {"left": left, "right": right, "top": top, "bottom": bottom}
    for name, value in pads.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % stride:
            raise ValueError(
                f"{name} must be a non-negative multiple of {stride} pixels (the token stride), got {value!r}."
            )
    if not any(pads.values()):
        raise ValueError("outpainting needs padding on at least one side (left, right, top or bottom > 0).")
    pixels = np.asarray(_pil(image, "image", 3))
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[top : top + pixels.shape[0], left : left + pixels.shape[1]] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)


__all__ = [
    "init_pixels",
    "outpaint_canvas",
    "random_redraw_tokens",
    "redraw_count",
    "redraw_tokens",
    "scaled_iterations",
]
