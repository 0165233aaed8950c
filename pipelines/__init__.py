"""Harmon pipelines (diffusers `HarmonText2ImagePipeline`, transformers text-to-image): see issue #3."""
