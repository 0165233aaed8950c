"""Harmon for transformers and diffusers.

Importing the package registers Harmon with the transformers Auto classes, so pip users load checkpoints with
`AutoModel.from_pretrained(path)` and need no `trust_remote_code`. The modules of this folder that the model
imports are also the Hub remote code: they only use single-dot sibling imports.
"""

__version__ = "0.2.0.dev0"  # the one place the version is defined; setup.py reads it without importing the package

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_harmon import HARMON_PRESETS, HarmonConfig
from .image_processing_harmon import HarmonImageProcessor
from .modeling_harmon import (
    HarmonForConditionalGeneration,
    HarmonImageGenerationOutput,
    HarmonModel,
    HarmonPreTrainedModel,
    HarmonSamplingSpeedups,
)
from .modeling_harmon_settings import HarmonImageGenerationSettings, HarmonSettingError
from .processing_harmon import HarmonProcessor


def _register_auto_classes() -> None:
    AutoConfig.register(HarmonConfig.model_type, HarmonConfig, exist_ok=True)
    AutoModel.register(HarmonConfig, HarmonForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(HarmonConfig, HarmonForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(HarmonConfig, image_processor_classes={"pil": HarmonImageProcessor}, exist_ok=True)
    AutoProcessor.register(HarmonConfig, HarmonProcessor, exist_ok=True)


_register_auto_classes()

__all__ = [
    "HARMON_PRESETS",
    "HarmonConfig",
    "HarmonForConditionalGeneration",
    "HarmonImageGenerationOutput",
    "HarmonImageGenerationSettings",
    "HarmonImageProcessor",
    "HarmonModel",
    "HarmonPreTrainedModel",
    "HarmonProcessor",
    "HarmonSamplingSpeedups",
    "HarmonSettingError",
    "__version__",
]
