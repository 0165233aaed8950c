"""Evaluation: benchmark prompt sets drawn into the layouts the field's own scorers read, scores computed by the
field's tools, and model-card reports of them (docs/evaluation.md).

- `geneval_layout` / `cli_geneval`: `harmon eval geneval`, GenEval's prompt folders and samples;
- `dpg_layout` / `cli_dpg`: `harmon eval dpg`, DPG-Bench's 2x2 grids;
- `caption_files` / `cli_captions`: `harmon eval captions`, one image per caption of MSCOCO-30K, MJHQ-30K and the like;
- `benchmark_drawing`: what those three drawing commands share (their flags, and drawing through `batch_jobs`);
- `image_metrics` / `cli_image_metrics`: `harmon eval fid` and `harmon eval clipscore`, computed by torchmetrics
  offline from local weights (the `eval` extra);
- `report` / `cli_report`: `harmon eval report`, measured results merged into a copy of a model card.

Submodules are imported on demand, so importing this package costs nothing.
"""
