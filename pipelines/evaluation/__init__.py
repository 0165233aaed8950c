"""Evaluation of generated images: benchmark scores by the field's own tools, and model-card reports of them.

`image_metrics`: FID between two image folders and CLIPScore of images against their prompts, computed by
torchmetrics offline from local weights (the `eval` extra); `cli_image_metrics`: their `harmon eval fid` /
`harmon eval clipscore` arguments and runners. `report` / `cli_report`: `harmon eval report`, measured results merged
into a model card. Submodules are imported on demand, so importing this package costs nothing.
"""
