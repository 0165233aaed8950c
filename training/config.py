"""Training configuration: YAML files over code defaults, `--set key.path=value` overrides, `--data` sources.

Every number of a recipe (learning rates per module group, data ratio, image size, batch, steps) is a config value,
so the paper's three stages differ only in their YAML files (`training/configs/`). Unknown keys are refused with the
valid ones listed, so a typo never silently trains with a default.
"""

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from .data.examples import check_edit_dropout


# Parameter groups: a parameter belongs to the first group whose pattern (a regex searched in its name) matches.
# Names are those of `HarmonForConditionalGeneration` (PEFT adds prefixes; `search` finds the pattern anywhere).
DEFAULT_GROUPS = {
    "llm": {
        "patterns": [r"model\.language_model\.", r"(^|\.)lm_head\."],
        "lr": 1e-5,
        "trainable": True,
    },
    "mar_encoder": {
        "patterns": [r"model\.mar_encoder\.", r"model\.proj_in\."],
        "lr": 1e-5,
        "trainable": True,
    },
    "mar_decoder": {
        # with the decoder: an edit's source tokens (`edit_source_tokens`) are the decoder's inputs
        "patterns": [
            r"model\.proj_out\.",
            r"model\.mar_decoder\.",
            r"model\.edit_source_proj\.",
            r"model\.diffusion_head\.",
        ],
        "lr": 1e-4,
        "trainable": True,
    },
}

DEFAULTS: dict[str, Any] = {
    "model": {
        "init": "pretrained",  # pretrained: load `path` (or --model); from_config: build a new Harmon
        "path": None,
        # from_config: a preset name ("harmon-0.5b") or HarmonConfig keyword arguments; pretrained: config attributes
        # to change (e.g. {visual_grad_scale: 0.5})
        "config": None,
        # from_config: tokenizer folder (gets `<image>` if it lacks it); pretrained: a larger tokenizer that keeps the
        # checkpoint's ids (the embedding table grows)
        "tokenizer": None,
        "vae": None,  # from_config: a trained diffusers AutoencoderKL folder
        "llm": None,  # from_config, optional: a pretrained Qwen2 folder for the LLM weights
        # pretrained, optional: deepen the checkpoint's LLM to this many layers, each new one a copy of the layer
        # below it whose output projections start at zero, so the model starts unchanged (training/llm_growth.py)
        "llm_depth": None,
        # pretrained with a larger model.tokenizer: how the new embedding rows start. "mean": drawn around the trained
        # rows' mean (transformers' resize_token_embeddings); "unk": copies of the unknown token's row, so a prompt
        # with the new words runs exactly as it did when they were unknown (an adapter can then learn them alone).
        "new_token_init": "mean",
        "dtype": "float32",
    },
    "image_size": 256,
    "data": {
        "sources": [],
        # `edit` (instruction editing) and `distill` (conditioning distillation) are optional in a ratio given whole
        # (e.g. by --set): missing means 0.
        "ratio": {"text": 0, "image2text": 1, "text2image": 2, "edit": 0, "distill": 0},
        "micro_batch_size": {"text": 8, "image2text": 8, "text2image": 32, "edit": 16, "distill": 32},
        "max_length": 2048,
        "t2i_max_length": 128,
        "caption_dropout": 0.1,
        # Edit samples drop the instruction, the source image(s) or both with these probabilities (exclusive draws;
        # InstructPix2Pix's 5 % each), so that both guidance scales of editing have their unconditional rows.
        "edit_dropout": {"text": 0.05, "image": 0.05, "both": 0.05},
        "min_image_side": 8,
        "max_aspect_ratio": 10.0,
        "num_workers": 0,
        "latents_cache": None,  # folder(s) written by harmon_training.data.cache_text_to_image_latents
    },
    "optim": {
        "groups": copy.deepcopy(DEFAULT_GROUPS),
        "weight_decay": 0.02,
        "no_decay_patterns": [r"model\.diffusion_head\."],  # plus every 1-D parameter and every bias
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "scheduler": "cosine",
        "warmup": 0.01,  # fraction of max_steps (< 1) or a number of steps
        "max_grad_norm": 1.0,
        "task_loss_weights": {"text": 1.0, "image2text": 1.0, "text2image": 1.0, "edit": 1.0, "distill": 1.0},
        "task_max_grad_norm": {"text": None, "image2text": None, "text2image": None, "edit": None, "distill": None},
    },
    "train": {
        "max_steps": 1000,
        "cycles_per_step": 1,  # data-ratio cycles (micro-batches: sum of the ratio) per optimizer step
        "global_batch_size": None,  # if set, cycles_per_step is derived from it (samples per step, all ranks)
        "seed": 0,
        # Keep an exponential moving average of the trainable weights with this largest decay (e.g. 0.999) and save
        # it as the final model (checkpoints keep the raw weights plus ema.safetensors); null: no average.
        "ema_decay": None,
        # true: the decay warms up as (1 + step) / (10 + step), for an average that starts from random weights; false:
        # the full decay from the first step, for a stage that continues a trained model (a warm-up restarts a short
        # average there). A long average also keeps weights from before a task the stage adds was learned: the
        # Shapes recipe's stage II lost VQA with it (training/configs/shapes/README.md).
        "ema_warmup": True,
        "bf16": "auto",  # auto: bf16 autocast where the device supports it
        "gradient_checkpointing": True,
        "save_steps": 500,
        "save_total_limit": 2,
        "logging_steps": 10,
        "report_to": "none",  # or "tensorboard"
        "output_dir": "outputs/harmon",
    },
    "lora": {
        "enabled": False,
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
        # modules trained as full copies beside the adapters (peft's modules_to_save), by name; e.g. ["embed_tokens"]
        # for an adapter that must learn new words
        "modules_to_save": [],
        "merge_at_end": False,
    },
}

# Subtrees whose keys are the user's to choose (not checked against DEFAULTS).
OPEN_KEYS = {"model.config", "optim.groups", "data.sources"}


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 floats: `1e-5` is a number (PyYAML's 1.1 rules read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.nan)$",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str, where: str):
    """`text` parsed as YAML; a syntax error is a [`ConfigError`] naming `where` and the position."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{where} is not valid YAML ({problem}{at}).") from None


class ConfigError(ValueError):
    """A configuration mistake: names the key, the value and what is allowed."""


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base and prefix.rstrip(".") not in OPEN_KEYS:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {', '.join(sorted(base))}.")
        if isinstance(value, dict) and isinstance(base.get(key), dict) and path not in OPEN_KEYS:
            merged[key] = _merge(base[key], value, f"{path}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_value(config: dict, assignment: str) -> dict:
    """Apply one `--set a.b=value` (value parsed as YAML) and return the new config."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key.path=value, got {assignment!r}.")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    value = _yaml(raw, f"--set {path.strip()}: the value {raw!r}") if raw.strip() else None
    node, checked = config, DEFAULTS
    for depth, key in enumerate(keys[:-1]):
        prefix = ".".join(keys[: depth + 1])
        if not isinstance(node, dict) or key not in node:
            valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(none: not a mapping)"
            raise ConfigError(f"--set {path}: unknown key {prefix!r}; valid keys here: {valid}.")
        node = node[key]
        checked = checked.get(key) if isinstance(checked, dict) and prefix not in OPEN_KEYS else None
    last = keys[-1]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {path}: {'.'.join(keys[:-1])!r} is not a mapping.")
    if checked is not None and last not in checked:
        raise ConfigError(f"--set {path}: unknown key {last!r}; valid keys here: {', '.join(sorted(checked))}.")
    node[last] = value
    return config


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """DEFAULTS, then the YAML file at `path` (if any), then each `--set` override, then validation."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {str(path)!r}: no such file.")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--config {str(path)!r} cannot be read as UTF-8 text ({error}).") from None
        loaded = _yaml(text, f"--config {str(path)!r}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {str(path)!r} must hold a mapping at the top level.")
        config = _merge(config, loaded)
    for assignment in overrides:
        config = set_value(config, assignment)
    validate(config)
    return config


def validate(config: dict) -> None:
    """Check values whose mistakes would otherwise surface deep inside training."""
    if config["model"]["init"] not in ("pretrained", "from_config"):
        raise ConfigError(f"model.init must be 'pretrained' or 'from_config', got {config['model']['init']!r}.")
    depth = config["model"]["llm_depth"]
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ConfigError(f"model.llm_depth must be a positive integer (LLM layers) or null, got {depth!r}.")
    if depth is not None and config["model"]["init"] != "pretrained":
        raise ConfigError(
            "model.llm_depth grows a trained checkpoint (init: pretrained); with init: from_config "
            "set the LLM's num_hidden_layers in model.config instead."
        )
    if config["model"]["new_token_init"] not in ("mean", "unk"):
        raise ConfigError(f"model.new_token_init must be 'mean' or 'unk', got {config['model']['new_token_init']!r}.")
    saved = config["lora"]["modules_to_save"]
    if not isinstance(saved, list) or not all(isinstance(name, str) and name for name in saved):
        raise ConfigError(f"lora.modules_to_save must be a list of module names, got {saved!r}.")
    if config["model"]["dtype"] not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype must be 'float32' or 'bfloat16', got {config['model']['dtype']!r}.")
    size = config["image_size"]
    if not isinstance(size, int) or size <= 0:
        raise ConfigError(f"image_size must be a positive integer (pixels), got {size!r}.")
    ratio = config["data"]["ratio"]
    tasks, optional = ("text", "image2text", "text2image"), ("edit", "distill")
    if (
        not isinstance(ratio, dict)
        or not set(tasks) <= set(ratio) <= set(tasks + optional)
        or not all(isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in ratio.values())
    ):
        raise ConfigError(
            f"data.ratio must give a non-negative integer for each of {tasks} (and optionally {optional}), got "
            f"{ratio!r}."
        )
    if sum(ratio.values()) == 0:
        raise ConfigError("data.ratio is all zeros: at least one task needs micro-batches.")
    sizes = config["data"]["micro_batch_size"]
    for task, count in ratio.items():
        size = sizes.get(task) if isinstance(sizes, dict) else None
        if count and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"data.micro_batch_size.{task} must be an integer >= 1 (data.ratio.{task} is {count}).")
    dropout = config["data"]["edit_dropout"]
    try:
        check_edit_dropout(dropout)
    except ValueError as error:
        raise ConfigError(f"data.{error}") from None
    for name, group in config["optim"]["groups"].items():
        unknown = set(group) - {"patterns", "lr", "trainable", "weight_decay"}
        if unknown:
            raise ConfigError(
                f"optim.groups.{name}: unknown keys {sorted(unknown)}; valid: lr, patterns, trainable, weight_decay."
            )
        if not isinstance(group.get("lr"), (int, float)) or group["lr"] < 0:
            raise ConfigError(f"optim.groups.{name}.lr must be a number >= 0, got {group.get('lr')!r}.")
    train = config["train"]
    for key in ("max_steps", "cycles_per_step", "save_steps", "logging_steps"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"train.{key} must be an integer >= 1, got {train[key]!r}.")
    decay = train["ema_decay"]
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, float) or not 0.0 < decay < 1.0):
        raise ConfigError(f"train.ema_decay must be null or a number in (0, 1) such as 0.999, got {decay!r}.")
    if not isinstance(train["ema_warmup"], bool):
        raise ConfigError(f"train.ema_warmup must be true or false, got {train['ema_warmup']!r}.")
    if train["bf16"] not in ("auto", True, False):
        raise ConfigError(f"train.bf16 must be auto, true or false, got {train['bf16']!r}.")


def resolve_bf16(setting) -> bool:
    """`train.bf16`: `"auto"` means bf16 mixed precision where the device supports it (CUDA with bf16)."""
    if setting == "auto":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def replace_sources(config: dict, specs: list) -> dict:
    """`--data KIND=...`: each given kind's sources replace the config's sources of that kind (ratios are kept)."""
    kinds = {spec.kind for spec in specs}
    kept = [source for source in config["data"]["sources"] if source.get("kind") not in kinds]
    config["data"]["sources"] = kept + [dataclasses.asdict(spec) for spec in specs]
    return config
