"""Image processor of Harmon: pad to the target aspect ratio with grey, resize bicubically, scale to [-1, 1].

This reproduces the reference understanding preprocessing (`expand2square` with colour (127, 127, 127), a PIL bicubic
resize, then `2 * (x / 255) - 1`) and generalises the padding to non-square target sizes. It also maps generated
images back to pixels (`postprocess`) and says how many `<image>` placeholders an image occupies in a prompt.
"""

import os
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import load_image
from transformers.processing_utils import ImagesKwargs


# The reference pads with mid grey before resizing.
PAD_COLOR = (127, 127, 127)
POSTPROCESS_OUTPUT_TYPES = ("pil", "np", "pt")


class HarmonImageProcessorKwargs(ImagesKwargs, total=False):
    """Call-time arguments of [`HarmonImageProcessor`] beyond the standard `size` and `return_tensors`."""

    max_pixels: int | None


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _describe(value: object) -> str:
    """A short description of an unexpected input for error messages (never the whole repr of a big array)."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, str):
        return f"the string {value[:80]!r}"
    return f"a {type(value).__name__}"


def _high_bit_to_8bit(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey PIL image as an 8-bit "L" image, scaled rather than clipped.

    PIL's own `convert("RGB")` clips these modes to 255, so a mid-grey 16-bit PNG turns white. Which range the
    values use is not recorded in the image, so it is guessed from the largest value:
    - integer modes ("I;16*" and "I"): a maximum above 255 means the 16-bit range (x / 257); otherwise the image
      holds 8-bit values (what PIL's own conversion of an 8-bit image to "I;16" or "I" gives) and they are kept.
      Only a 16-bit image darker than 1/257 of full scale is guessed wrong (it comes out brighter).
    - "F": a maximum of at most 1 means [0, 1] (x * 255), otherwise [0, 255].
    Values outside those ranges (negative, above 65535 or above 255.0 for floats) and NaN/inf are refused, not clipped.
    """
    array = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(array).all():
            raise ValueError(f"{name} (a PIL image of mode F) contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 255.0:
            raise ValueError(
                f"{name} (a PIL image of mode F) holds values in [{low:g}, {high:g}]; float images must lie in "
                f"[0, 1] or [0, 255]."
            )
        scaled = array.astype(np.float64) * (255.0 if high <= 1.0 else 1.0)
    else:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"{name} (a PIL image of mode {image.mode}) holds integers in [{low}, {high}]; integer images must "
                f"lie in [0, 255] (8-bit) or [0, 65535] (16-bit)."
            )
        scaled = array.astype(np.float64) / (257.0 if high > 255 else 1.0)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _rgb_image(image: Image.Image, name: str) -> Image.Image:
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_bit_to_8bit(image, name)
    try:
        return image.convert("RGB")
    except ValueError as error:
        message = f"{name} is a PIL image of mode {image.mode}, which PIL cannot convert to RGB: {error}"
        raise ValueError(message) from error


def to_rgb_image(image: Image.Image) -> Image.Image:
    """`image` as an 8-bit RGB PIL image.

    16-bit ("I;16", "I;16B", ...), 32-bit integer ("I") and float ("F") images are scaled to 8 bits (see
    `_high_bit_to_8bit` for how their range is guessed) instead of being clipped by PIL. Every other mode goes through
    PIL's `convert("RGB")`: palettes are expanded, grey is repeated, CMYK is converted, and alpha (RGBA, LA, PA,
    transparent palettes) is dropped, not composited, exactly as the reference preprocessing does, so that results
    stay identical to it. Raises `ValueError` for a value range that cannot be an image.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {_describe(image)}.")
    return _rgb_image(image, "image")


def flatten_images(images: object) -> Iterator[object]:
    """Single images from an image, a (nested) list of images, or a 4-D (batch, ...) array or tensor."""
    if isinstance(images, (list, tuple)):
        for item in images:
            yield from flatten_images(item)
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        yield from images
    else:
        yield images


class HarmonImageProcessor(BaseImageProcessor):
    r"""
    Prepares images for Harmon's understanding path and turns generated images back into pixels.

    Every image is converted to RGB, padded with grey (127, 127, 127) to the aspect ratio of `size` (centred, as the
    reference's `expand2square` does for square sizes), resized to `size` with PIL's bicubic filter and scaled to
    `[-1, 1]` as `2 * (x / 255) - 1`. The VAE then sees `height / vae_stride` x `width / vae_stride` latent pixels,
    so the prompt needs `(height / vae_stride) * (width / vae_stride) + buffer_size` placeholders per image.

    Args:
        size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 512, "width": 512}`):
            Output size `{"height": H, "width": W}` (an int means a square). Both sides must be positive multiples of
            `vae_stride`. 512 is the reference understanding script's default.
        vae_stride (`int`, *optional*, defaults to 16):
            Pixels per image token side: the VAE downsampling factor times the MAR patch size (1 in Harmon).
        buffer_size (`int`, *optional*, defaults to 64):
            Buffer tokens the MAR encoder adds to every image; each needs a placeholder too.
        max_pixels (`int`, *optional*, defaults to 100_000_000):
            Largest input (height x width, before resizing) accepted, so that a wrong array or a decompression bomb
            fails with a clear error instead of exhausting memory.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = HarmonImageProcessorKwargs

    def __init__(
        self,
        size: dict[str, int] | int | None = None,
        vae_stride: int = 16,
        buffer_size: int = 64,
        max_pixels: int = 100_000_000,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.vae_stride = _check_int("vae_stride", vae_stride, 1)
        self.buffer_size = _check_int("buffer_size", buffer_size, 0)
        self.max_pixels = _check_int("max_pixels", max_pixels, 1)
        height, width = self._check_size({"height": 512, "width": 512} if size is None else size)
        self.size = {"height": height, "width": width}

    # ------------------------------------------------------------------------------------------------ sizes
    def _check_size(self, size: dict[str, int] | int) -> tuple[int, int]:
        """(height, width) of `size`, which must be an int or a {"height", "width"} dict of multiples of the stride."""
        if isinstance(size, int) and not isinstance(size, bool):
            size = {"height": size, "width": size}
        if not isinstance(size, dict) or set(size) != {"height", "width"}:
            raise ValueError(f'size must be an int or a dict {{"height": H, "width": W}}, got {size!r}.')
        height, width = size["height"], size["width"]
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % self.vae_stride:
                raise ValueError(
                    f"size must have a height and a width that are positive multiples of vae_stride "
                    f"({self.vae_stride}), got {size!r}."
                )
        return height, width

    def num_image_placeholders(self, height: int | None = None, width: int | None = None) -> int:
        """`<image>` placeholders one image of `height` x `width` output pixels occupies (tokens + buffers).

        Defaults to the processor's `size`; the processor expands every `<image>` of a prompt to this many copies.
        """
        default_height, default_width = self.size["height"], self.size["width"]
        height, width = self._check_size(
            {
                "height": default_height if height is None else height,
                "width": default_width if width is None else width,
            }
        )
        return (height // self.vae_stride) * (width // self.vae_stride) + self.buffer_size

    # ------------------------------------------------------------------------------------------------ inputs
    @staticmethod
    def _channel_axis(shape: tuple[int, ...], channels_first: bool) -> int:
        """Axis holding the colour channels of a 3-D array; ambiguous shapes follow the library's convention
        (channels first for torch tensors, channels last for NumPy arrays, as PIL and NumPy images are)."""
        first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
        if first and (channels_first or not last):
            return 0
        if last:
            return 2
        return -1

    @classmethod
    def _array_to_pil(cls, array: np.ndarray, name: str, channels_first: bool, max_pixels: int) -> Image.Image:
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise ValueError(
                f"{name} must be an image of shape (height, width), (height, width, channels) or (channels, height, "
                f"width), got an array of shape {tuple(array.shape)}."
            )
        axis = cls._channel_axis(array.shape, channels_first)
        if axis < 0:
            raise ValueError(
                f"{name} must have 1 (grey), 3 (RGB) or 4 (RGBA) channels first or last, got shape {tuple(array.shape)}."
            )
        if axis == 0:
            array = array.transpose(1, 2, 0)
        cls._check_extent(array.shape[0], array.shape[1], name, max_pixels)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(
                f"{name} must hold uint8 values in [0, 255] or floats in [0, 1], got dtype {array.dtype}."
            )
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ValueError(f"{name} contains NaN or infinite values; images must be finite floats in [0, 1].")
            low, high = float(array.min()), float(array.max())
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"{name} holds floats in [{low:g}, {high:g}], but float images must lie in [0, 1] (map [-1, 1] "
                    f"images with (x + 1) / 2; give 0..255 images as uint8)."
                )
            # The reference only ever sees 8-bit images, so float images are quantised the same way.
            array = np.round(array.astype(np.float64) * 255.0)
        elif array.dtype != np.uint8:
            low, high = int(array.min()), int(array.max())
            if low < 0 or high > 255:
                raise ValueError(f"{name} holds integers in [{low}, {high}], but integer images must lie in [0, 255].")
        array = np.ascontiguousarray(array.astype(np.uint8))
        return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)

    @staticmethod
    def _check_extent(height: int, width: int, name: str, max_pixels: int) -> None:
        if height == 0 or width == 0:
            raise ValueError(f"{name} is empty (height {height}, width {width}); images need at least one pixel.")
        if height * width > max_pixels:
            raise ValueError(
                f"{name} has {height} x {width} = {height * width} pixels, more than max_pixels ({max_pixels}); "
                f"downscale it first or raise max_pixels."
            )

    @classmethod
    def _read_image(cls, source: str, name: str, max_pixels: int) -> Image.Image:
        """The image of a URL (transformers' `load_image`), or of a file in its own mode, turned upright by its EXIF
        orientation: `load_image` would convert a file to RGB itself, clipping 16-bit images. A file's size is
        checked from its header, before its pixels are decoded."""
        try:
            if not os.path.isfile(source):
                return load_image(source)
            opened = Image.open(source)
        except Exception as error:
            raise ValueError(f"{name} ({_describe(source)}) could not be read as an image: {error}") from error
        with opened:
            cls._check_extent(opened.height, opened.width, name, max_pixels)
            try:
                opened.load()
                return ImageOps.exif_transpose(opened)
            except Exception as error:
                raise ValueError(f"{name} ({_describe(source)}) could not be read as an image: {error}") from error

    def _to_rgb(self, image: object, name: str, max_pixels: int) -> Image.Image:
        """One input image as an RGB PIL image, with every check that can name the offending input."""
        if isinstance(image, os.PathLike):
            image = os.fspath(image)
        if isinstance(image, str):
            if not (os.path.isfile(image) or image.startswith(("http://", "https://", "data:image/"))):
                raise ValueError(
                    f"{name} is {_describe(image)}, which is neither an existing image file nor an http(s) or "
                    f"data:image URL."
                )
            image = self._read_image(image, name, max_pixels)
        if isinstance(image, torch.Tensor):
            tensor = image.detach().cpu()
            if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
                tensor = tensor.float()  # NumPy has no bfloat16
            image = self._array_to_pil(tensor.numpy(), name, True, max_pixels)
        elif isinstance(image, np.ndarray):
            image = self._array_to_pil(image, name, False, max_pixels)
        elif isinstance(image, Image.Image):
            self._check_extent(image.height, image.width, name, max_pixels)
        else:
            raise ValueError(
                f"{name} must be a PIL image, a NumPy array, a torch tensor, an image path or URL, or a (nested) list "
                f"of those; got {_describe(image)}."
            )
        return _rgb_image(image, name)

    @staticmethod
    def _pad_and_resize(image: Image.Image, height: int, width: int) -> np.ndarray:
        """Centre `image` on a grey canvas of the target aspect ratio, then resize bicubically: (height, width, 3) uint8."""
        w, h = image.size
        if w * height != h * width:
            if w * height > h * width:  # wider than the target: grey bands above and below
                canvas_w, canvas_h = w, max(h, (w * height + width // 2) // width)
            else:
                canvas_w, canvas_h = max(w, (h * width + height // 2) // height), h
            canvas = Image.new("RGB", (canvas_w, canvas_h), PAD_COLOR)
            canvas.paste(image, ((canvas_w - w) // 2, (canvas_h - h) // 2))
            image = canvas
        return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))

    # ------------------------------------------------------------------------------------------------ API
    def preprocess(
        self,
        images: object,
        size: dict[str, int] | int | None = None,
        max_pixels: int | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Turn one image or a batch (list, nested list, or 4-D array/tensor) into `pixel_values` (B, 3, H, W).

        Args:
            images: PIL images (any mode: 16-bit, 32-bit and float ones are scaled to 8 bits, see `to_rgb_image`),
                NumPy arrays or torch tensors of shape (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4} (uint8 in
                [0, 255] or floats in [0, 1]), image paths or URLs.
            size: output size, overriding the processor's `size` for this call.
            max_pixels: input size limit, overriding the processor's `max_pixels` for this call.
            return_tensors: `"pt"`, `"np"` or `None` (a NumPy array).

        Returns:
            `BatchFeature` with float32 `pixel_values` in [-1, 1].
        """
        unsupported = sorted(key for key, value in kwargs.items() if value is not None)
        if unsupported:
            raise ValueError(
                f"HarmonImageProcessor got unsupported arguments {unsupported}; it accepts size, max_pixels and "
                f"return_tensors (its resize, padding and scaling are fixed by the reference)."
            )
        height, width = self._check_size(self.size if size is None else size)
        max_pixels = self.max_pixels if max_pixels is None else _check_int("max_pixels", max_pixels, 1)
        if images is None:
            raise ValueError("images must be an image or a list of images, got None.")
        batch = [
            self._pad_and_resize(self._to_rgb(image, f"images[{index}]", max_pixels), height, width)
            for index, image in enumerate(flatten_images(images))
        ]
        if not batch:
            raise ValueError(f"images must hold at least one image, got {_describe(images)} with none.")
        pixels = np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2), dtype=np.float32)
        return BatchFeature({"pixel_values": (pixels / 255.0) * 2.0 - 1.0}, tensor_type=return_tensors)

    def postprocess(
        self, images: torch.Tensor | np.ndarray, output_type: str = "pil"
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Map generated images in [-1, 1] back to 8-bit pixels, as `round(127.5 * (x + 1))` clamped to [0, 255].

        Args:
            images: (B, 3, H, W) or (3, H, W) floats in [-1, 1] (values outside are clamped).
            output_type: `"pil"` (a list of RGB images), `"np"` (uint8 array (B, H, W, 3)) or `"pt"` (uint8 tensor
                (B, 3, H, W)).
        """
        if output_type not in POSTPROCESS_OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {POSTPROCESS_OUTPUT_TYPES}, got {output_type!r}.")
        if not isinstance(images, (torch.Tensor, np.ndarray)):
            raise ValueError(
                f"images must be a torch tensor or NumPy array of shape (B, 3, H, W), got {_describe(images)}."
            )
        tensor = torch.as_tensor(images).detach().cpu()
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[1] != 3 or not tensor.is_floating_point():
            raise ValueError(f"images must be floats of shape (B, 3, H, W) or (3, H, W), got {_describe(images)}.")
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise ValueError("images contain NaN or infinite values; generated images must be finite.")
        pixels = ((tensor.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        if output_type == "pt":
            return pixels
        array = pixels.permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        return [Image.fromarray(image) for image in array]


HarmonImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["HarmonImageProcessor", "to_rgb_image"]
