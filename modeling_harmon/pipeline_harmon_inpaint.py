"""diffusers pipeline for Harmon inpainting, outpainting and variations (`HarmonInpaintPipeline`).

A file of its own because it is uploaded to the Hub next to `pipeline_harmon.py` as a second custom pipeline of the
same repo. `model_index.json` can name one pipeline class only (the text-to-image `HarmonPipeline`); diffusers
loads another one by file name, `DiffusionPipeline.from_pretrained(repo, custom_pipeline="pipeline_harmon_inpaint",
trust_remote_code=True)`, and then, with no class name to go by, takes the one `DiffusionPipeline` subclass the module
holds (`diffusers.utils.dynamic_modules_utils.find_pipeline_class`; it raises if there are several). Hence the base
class is imported with a `from .pipeline_harmon import` line, which diffusers reads to fetch the sibling file as well
(`get_relative_imports`), and its name is deleted once the subclass is defined. Like `pipeline_harmon.py`, the file
imports only torch, diffusers and its sibling.
"""

import torch

from .pipeline_harmon import HarmonPipeline


class HarmonInpaintPipeline(HarmonPipeline):
    r"""
    Inpainting, outpainting and variations with Harmon, by the masked-autoregressive sampler itself: it starts from
    `image`'s tokens and draws only those `mask_image` marks (white = redraw; a token is redrawn if any pixel of its
    cell is at least half white), or, without a mask, a `strength` share of them at random positions (variations).
    No retraining is involved: MAR already predicts masked tokens from visible ones. For outpainting, pad the image
    and mark the padding (`modeling_harmon_canvas.outpaint_canvas`).

    Takes every argument of [`HarmonPipeline`] plus `image` (PIL image(s), or (B, 3, H, W) in [0, 1]; its size is the
    output's), `mask_image` and `strength`. Unless `num_inference_steps` is given, the MAR iterations are the
    model's, scaled by the share of tokens drawn.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt=None,
        image=None,
        mask_image=None,
        strength: float | None = None,
        paste_back: bool | None = None,
        mask_blur: float = 0.0,
        **kwargs,
    ):
        """See the class docstring. `paste_back`: put `image`'s own pixels back outside `mask_image` (diffusers'
        `apply_overlay`), since the VAE round trip changes every pixel a little. Default: on wherever it applies (a
        mask and PIL output): on the Shapes inpainting benchmark it left success unchanged (149/240 either way) and
        made the unmasked region exact instead of 42.9 dB PSNR. `mask_blur`: a Gaussian blur radius of the mask for
        that paste (a feathered edge)."""
        if image is None:
            raise ValueError("image is required: the picture to inpaint, outpaint or vary.")
        applies = mask_image is not None and kwargs.get("output_type", "pil") == "pil"
        if paste_back and not applies:
            raise ValueError("paste_back needs a mask_image and output_type='pil'.")
        paste_back = applies if paste_back is None else paste_back
        if isinstance(image, list) or (hasattr(image, "size") and not isinstance(image, torch.Tensor)):
            images = image if isinstance(image, list) else [image]
            height, width = images[0].size[1], images[0].size[0]
        else:
            height, width = image.shape[-2:]
        for name, value in (("height", height), ("width", width)):
            if kwargs.get(name) not in (None, value):
                raise ValueError(
                    f"{name} ({kwargs[name]}) must match image ({value} pixels); resize the image instead."
                )
            kwargs[name] = int(value)
        self._canvas = {"init_image": image, "mask_image": mask_image, "strength": strength}
        try:
            output = super().__call__(prompt, **kwargs)
        finally:
            self._canvas = {}
        if paste_back:
            images = output.images if kwargs.get("return_dict", True) else output[0]
            sources = image if isinstance(image, list) else [image]
            masks = mask_image if isinstance(mask_image, list) else [mask_image]
            per_prompt = kwargs.get("num_images_per_prompt", 1)  # images come prompt-major
            for index, drawn in enumerate(images):
                source = sources[index // per_prompt if len(sources) > 1 else 0].convert("RGB")
                mask = masks[index // per_prompt if len(masks) > 1 else 0].convert("L")
                if mask_blur:
                    mask = self.image_processor.blur(mask, mask_blur)
                images[index] = self.image_processor.apply_overlay(mask, source, drawn)
        return output


# diffusers' `find_pipeline_class` must see one pipeline class in this module (see the module docstring).
del HarmonPipeline
