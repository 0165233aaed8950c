"""Harmon pipelines for pip users (installed as `harmon_pipelines`).

The classes live in `modeling_harmon/` because the same files are uploaded to the Hub as remote code (flat,
importing nothing from this package); this package re-exports them. Importing it imports `modeling_harmon`, which
registers Harmon with the transformers Auto classes,
and registers the transformers `text-to-image` task.
"""

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_harmon.pipeline_harmon import HarmonPipeline, HarmonText2ImagePipeline
from modeling_harmon.pipeline_harmon_edit import HarmonImageEditPipeline
from modeling_harmon.pipeline_harmon_inpaint import HarmonInpaintPipeline
from modeling_harmon.pipeline_text_to_image_harmon import HarmonTextToImagePipeline


# transformers has no text-to-image task: registering ours lets pip users call `pipeline("text-to-image",
# model=harmon_model, tokenizer=tokenizer)` on a loaded model. Checkpoint folders carry the same task in
# `config.custom_pipelines` for Hub users (loaded with trust_remote_code=True).
if "text-to-image" not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        "text-to-image", pipeline_class=HarmonTextToImagePipeline, pt_model=AutoModel, type="multimodal"
    )


__all__ = [
    "HarmonImageEditPipeline",
    "HarmonInpaintPipeline",
    "HarmonPipeline",
    "HarmonText2ImagePipeline",
    "HarmonTextToImagePipeline",
]
