"""diffusers pipeline for Harmon instruction editing (`HarmonImageEditPipeline`).

A file of its own for the reason `pipeline_harmon_inpaint.py` gives: it is the Hub repo's third diffusers pipeline,
loaded by file name, `DiffusionPipeline.from_pretrained(repo, custom_pipeline="pipeline_harmon_edit",
trust_remote_code=True)`, and diffusers then takes the one `DiffusionPipeline` subclass of the module. So the base
class comes in through a `from .pipeline_harmon import` line (which makes diffusers fetch the sibling file) and its
name is deleted once the subclass is defined. Imports only the standard library, torch, PIL, diffusers and its sibling.
"""

import warnings
from dataclasses import dataclass

import torch
from PIL import Image

from .pipeline_harmon import HarmonPipeline, HarmonPipelineOutput


@dataclass
class HarmonImageEditPipelineOutput(HarmonPipelineOutput):
    """`images` as diffusers' pipelines return them; `descriptions`: with `edit_mode="describe"`, the model's text of
    each edited picture (what it drew, one per prompt), else None."""


def edit_training_warning(config) -> str | None:
    """The warning for a model whose config says which tasks it was trained for (`trained_tasks`, a list) and does
    not list "edit"; None when it does, or when the config does not say (None, or no such field)."""
    tasks = getattr(config, "trained_tasks", None)
    if not isinstance(tasks, (list, tuple)) or "edit" in tasks:
        return None
    return (
        f"this Harmon model was not trained for instruction editing (its config.trained_tasks is {list(tasks)}); it "
        "sees the image but was never taught to follow an edit instruction, so expect a new picture, not an edit."
    )


class HarmonImageEditPipeline(HarmonPipeline):
    r"""
    Instruction editing with Harmon ("make the circle blue"), named and called as diffusers' instruction-editing
    pipelines (`StableDiffusionInstructPix2PixPipeline`, `QwenImageEditPipeline`): `image` is the picture to edit,
    `prompt` the instruction. The picture reaches the LLM through the understanding path (VAE -> MAR encoder ->
    projection, `<image>` placeholders before the instruction), the same path a question about it takes, and the
    model draws a new image with it in view (`generate_images(context_images=...)`).

    Takes every argument of [`HarmonPipeline`] plus:
        image (PIL image, list of PIL images, or one such list per prompt): the picture(s) the instruction is about;
            several images are all seen by the LLM, in order (e.g. the picture to edit and a reference).
        edit_mode (`str`, *optional*): `"direct"` draws with the image(s) in view; `"describe"` has the model first
            write what the edited picture shows (reading the image(s) and the instruction as it reads a question)
            and then draw that text, returned as the output's `descriptions` (default: the checkpoint's stored
            mode, else `"direct"`).
        image_guidance_scale (`float`, *optional*): classifier-free guidance of the image(s), >= 1 (1 = off; default:
            the checkpoint's stored value, else 1). With it, each MAR step runs three row groups (text and image; image
            only; neither) and guides as InstructPix2Pix; `guidance_scale` then scales the instruction's effect.
        mask_image (*optional*): edit inside a mask (white = redraw): the first image of each prompt is then also the
            canvas whose other tokens are kept, and its size is the output's. Without a mask, `height` / `width` set
            the output size (default: the model's image size).

    Multi-turn editing: pass a result back as `image` with the next instruction; each turn sees only the picture it is
    given, not the earlier instructions.
    """

    @property
    def image_guidance_scale(self) -> float:
        return self._image_guidance_scale

    def check_inputs(self, *args, **settings):
        """[`HarmonPipeline.check_inputs`], keeping the resolved image guidance scale for the property above."""
        resolved = super().check_inputs(*args, **settings)
        self._image_guidance_scale = resolved.image_guidance_scale
        return resolved

    @torch.no_grad()
    def __call__(
        self,
        prompt=None,
        image=None,
        mask_image=None,
        image_guidance_scale: float | None = None,
        edit_mode: str | None = None,
        **kwargs,
    ):
        """See the class docstring. Errors of the model about its `context_images` / `init_image` name `image`, this
        call's argument."""
        canvas = self._check_image(image)
        message = edit_training_warning(self.model.config)
        if message is not None and not getattr(self, "_warned_untrained", False):
            warnings.warn(message, UserWarning, stacklevel=3)
            self._warned_untrained = True
        if mask_image is not None:
            first = canvas if isinstance(canvas, Image.Image) else canvas[0]
            stride = self.vae_scale_factor
            if first.width % stride or first.height % stride:
                raise ValueError(
                    f"image is {first.width}x{first.height} pixels; with a mask_image it is the canvas, whose sides "
                    f"must be multiples of {stride} (the token stride): resize or crop it."
                )
            for name, value in (("height", first.height), ("width", first.width)):
                if kwargs.get(name) not in (None, value):
                    raise ValueError(
                        f"{name} ({kwargs[name]}) must match image ({value} pixels): with a mask_image the picture "
                        "is the canvas, and its size is the output's."
                    )
                kwargs[name] = int(value)
            self._canvas = {"init_image": canvas, "mask_image": mask_image, "strength": None}
        self._context = {"context_images": image, "image_guidance_scale": image_guidance_scale, "edit_mode": edit_mode}
        self._descriptions = None
        try:
            output = super().__call__(prompt, **kwargs)
            if isinstance(output, tuple):
                return output
            return HarmonImageEditPipelineOutput(images=output.images, descriptions=self._descriptions)
        except ValueError as error:
            text = str(error)
            if type(error) is not ValueError or not any(name in text for name in ("context_images", "init_image")):
                raise
            text = text.replace("context_images", "image").replace("init_image", "image")
            if "max_position_embeddings" in text:
                text += " Or give fewer images: each one takes as many positions as it has placeholders."
            raise ValueError(text) from None
        finally:
            self._context, self._canvas = {}, {}

    @staticmethod
    def _check_image(image):
        """Refuse what is no picture to edit, naming `image`; returns the canvas of an edit inside a mask (the first
        picture of each prompt: one image, or one per prompt)."""
        shapes = "a PIL image, a list of PIL images (every prompt sees all of them) or one such list per prompt"
        if image is None:
            raise ValueError(f"image is required: the picture to edit, as {shapes}.")
        if isinstance(image, Image.Image):
            return image
        if not isinstance(image, (list, tuple)):
            raise ValueError(
                f"image must be {shapes}, got {type(image).__name__} (convert arrays with PIL.Image.fromarray)."
            )
        if not image:
            raise ValueError("image is an empty list: give at least one picture to edit.")
        nested = [isinstance(item, (list, tuple)) for item in image]
        if any(nested) and not all(nested):
            raise ValueError(f"image mixes pictures and lists; give {shapes}.")
        lists = [list(item) for item in image] if all(nested) else [list(image)]
        for index, pictures in enumerate(lists):
            if not pictures:
                raise ValueError(f"image[{index}] is an empty list: every prompt needs at least one picture to edit.")
            for picture in pictures:
                if not isinstance(picture, Image.Image):
                    raise ValueError(
                        f"image must hold PIL images, got {type(picture).__name__} (convert arrays with "
                        "PIL.Image.fromarray)."
                    )
        return [pictures[0] for pictures in lists] if all(nested) else lists[0][0]


# diffusers' `find_pipeline_class` must see one pipeline class in this module (see the module docstring).
del HarmonPipeline
