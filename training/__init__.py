"""Harmon training on `transformers.Trainer` (installed as `harmon_training`; run as `python -m training.train`).

Modules: `config` (YAML + `--set`), `data` (sources, examples, the rank-synchronised micro-batch stream),
`model_init` (start from a checkpoint or build a new Harmon), `trainer` (`HarmonTrainer`), `lora` (PEFT),
`train` (the command line). Stage recipes live in `configs/`.
"""
