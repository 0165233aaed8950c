"""Reading training images, the size filters, and the text-to-image square crop.

Every failure becomes a `SkipSample` with its reason, so a corrupt file or a thumbnail costs one sample, not a run.
"""

import io
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from .skips import BAD_ASPECT, TOO_SMALL, UNREADABLE_IMAGE, SkipSample


def open_image(value: object) -> Image.Image:
    """Open a stored image lazily (only the header is read, so size filters run before decoding).

    Args:
        value: a file path, encoded bytes, a `{"bytes", "path"}` dict (an undecoded Hugging Face `Image` value) or a
            PIL image.
    """
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        value = io.BytesIO(value)
    elif not isinstance(value, str):
        raise SkipSample(UNREADABLE_IMAGE, f"the image is a {type(value).__name__}, not a path, bytes or PIL image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(value)
    except Exception as error:  # PIL reports broken files with many exception types
        raise SkipSample(UNREADABLE_IMAGE, f"{str(value)[:200]} could not be opened: {error!r}") from None


def check_size(width: int, height: int, min_side: int, max_aspect_ratio: float) -> None:
    """Skip images with a side under `min_side` pixels or an aspect ratio outside (1 / max, max)."""
    if min(width, height) < min_side:
        raise SkipSample(TOO_SMALL, f"the image is {width}x{height}, smaller than {min_side} px on a side.")
    if not 1.0 / max_aspect_ratio < width / height < max_aspect_ratio:
        raise SkipSample(
            BAD_ASPECT, f"the image is {width}x{height}, beyond the aspect ratio limit {max_aspect_ratio}."
        )


def read_image(value: object, min_side: int, max_aspect_ratio: float) -> Image.Image:
    """Open a stored image (see `open_image`), check its size (see `check_size`) before decoding it, and decode it to
    RGB. A file opened here is closed whatever happens."""
    image = open_image(value)
    try:
        check_size(*image.size, min_side, max_aspect_ratio)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return image.convert("RGB")
    except SkipSample:
        raise
    except Exception as error:  # as in `open_image`
        raise SkipSample(UNREADABLE_IMAGE, f"the image could not be decoded: {error!r}") from None
    finally:
        if image is not value:
            image.close()


def square_crop(image: Image.Image, size: int, rng: np.random.Generator | None) -> torch.Tensor:
    """Crop the largest square (at a random place drawn from `rng`, or the centre when `rng` is None), resize it
    bicubically to `size` x `size` and scale to [-1, 1]: a float32 tensor (3, size, size).

    Cropping rather than padding keeps generated images free of grey bands; the reference crops the same way.
    """
    width, height = image.size
    side = min(width, height)
    if rng is None:
        left, top = (width - side) // 2, (height - side) // 2
    else:
        left, top = int(rng.integers(width - side + 1)), int(rng.integers(height - side + 1))
    square = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(square, dtype=np.float32).copy()).permute(2, 0, 1)
    return pixels / 255.0 * 2.0 - 1.0
