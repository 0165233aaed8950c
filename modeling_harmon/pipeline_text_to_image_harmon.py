"""transformers custom pipeline: `pipeline("text-to-image", model=repo, trust_remote_code=True)` for Harmon.

transformers has no text-to-image task; a checkpoint declares one in `config.custom_pipelines` and ships this
file, and `pipeline()` loads it as remote code (the model through `AutoModel` + `auto_map`). The sampling is the
model's own `generate_images`, so this pipeline and the diffusers one give the same images. Uploaded to the Hub
as is: it imports only torch, numpy, PIL and transformers.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline


# Arguments passed to `HarmonForConditionalGeneration.generate_images` besides its image-generation settings (which
# the model lists: `image_generation_argument_names`).
GENERATION_ARGUMENTS = ("negative_prompt", "num_images_per_prompt", "generator")


class HarmonTextToImagePipeline(Pipeline):
    """Text -> list of PIL images (one per `num_images_per_prompt`), for each prompt.

    Call with a prompt or a list of prompts and any of the `generate_images` arguments: the image-generation
    settings under their names or diffusers' (`num_inference_steps` or `num_iter`, `guidance_scale`, `height`,
    `width`, `cfg_schedule`, `temperature`, `num_sampling_steps`, `x0_clamp`), `sampling` (a sampling preset of the
    model, e.g. "fast"), `num_images_per_prompt`, `negative_prompt` and `generator`; every unset setting comes from the checkpoint's
    `generation_config.image_generation`.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    @staticmethod
    def custom_pipelines_entry() -> dict:
        """The `config.custom_pipelines` value that makes `pipeline("text-to-image", ...)` find this class."""
        stem = Path(sys.modules[HarmonTextToImagePipeline.__module__].__file__).stem
        return {
            "text-to-image": {
                "impl": f"{stem}.{HarmonTextToImagePipeline.__name__}",
                "pt": ["AutoModel"],
                "type": "multimodal",
            }
        }

    def _sanitize_parameters(self, **kwargs):
        allowed = (*self.model.image_generation_argument_names(), *GENERATION_ARGUMENTS)
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"Unknown text-to-image argument(s) {unknown}; allowed: {', '.join(allowed)}.")
        return {}, dict(kwargs), {}

    def preprocess(self, prompt):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}.")
        return {"prompt": prompt}

    def _forward(self, model_inputs, **generate_kwargs):
        output = self.model.generate_images(model_inputs["prompt"], tokenizer=self.tokenizer, **generate_kwargs)
        return {"images": output.images}

    def postprocess(self, model_outputs):
        images = ((model_outputs["images"].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(array)) for array in arrays]
