"""The model a training run starts from: a checkpoint, or a new Harmon built around a tokenizer and a trained VAE.

`model.init: from_config` is how a model is trained from scratch (the embedded demo model): Harmon's VAE is never
trained with the rest, so it comes from its own folder (a diffusers `AutoencoderKL`), and the LLM can start from a
pretrained Qwen2 folder. `model.init: pretrained` with `model.tokenizer` continues a checkpoint with a larger
vocabulary (the demo model's added stage learns new words): the embedding table grows, the old rows stay.
"""

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from modeling_harmon import HARMON_PRESETS, HarmonConfig, HarmonForConditionalGeneration

from .config import ConfigError
from .llm_growth import grow_llm_depth


def _tokenizer_with_image_token(path: str):
    # trust_remote_code=False throughout: a checkpoint's own code runs only where the user asked for it.
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if getattr(tokenizer, "image_token", None) is None:
        tokenizer = AutoTokenizer.from_pretrained(
            path, extra_special_tokens={"image_token": "<image>"}, trust_remote_code=False
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_new_model(settings: dict) -> tuple[HarmonForConditionalGeneration, object]:
    """A new Harmon from `settings` = the config's `model` section with `init: from_config`."""
    from diffusers import AutoencoderKL

    if not settings.get("tokenizer"):
        raise ConfigError("model.init=from_config needs model.tokenizer (a tokenizer folder).")
    tokenizer = _tokenizer_with_image_token(settings["tokenizer"])
    spec = settings.get("config") or {}
    if isinstance(spec, str):
        if spec not in HARMON_PRESETS:
            raise ConfigError(f"model.config must be one of {sorted(HARMON_PRESETS)} or a mapping, got {spec!r}.")
        spec = dict(HARMON_PRESETS[spec])
    spec = dict(spec)
    llm = None
    if settings.get("llm"):
        llm = AutoModel.from_pretrained(settings["llm"], trust_remote_code=False)
        spec["text_config"] = llm.config.to_dict()
    vae = None
    if settings.get("vae"):
        vae = AutoencoderKL.from_pretrained(settings["vae"])
        spec["vae_config"] = {key: value for key, value in vae.config.items() if not key.startswith("_")}
    spec.setdefault("image_token_id", tokenizer.image_token_id)
    spec.setdefault("pad_token_id", tokenizer.pad_token_id)
    spec.setdefault("eos_token_id", tokenizer.eos_token_id)
    config = HarmonConfig(**spec)
    if config.text_config.vocab_size < len(tokenizer) - 1:
        raise ConfigError(
            f"the LLM's vocab_size ({config.text_config.vocab_size}) is smaller than the tokenizer needs "
            f"({len(tokenizer) - 1} tokens besides <image>)."
        )
    model = HarmonForConditionalGeneration(config)
    if vae is not None:
        model.model.vae.load_state_dict(vae.state_dict())
    if llm is not None:
        model.model.language_model.load_state_dict(llm.state_dict())
        model.tie_weights()
    return model, tokenizer


def _config_overrides(settings: dict) -> dict:
    """`model.config` with `init: pretrained`: config attributes to change in the checkpoint's config (e.g. a later
    stage's `visual_grad_scale`), as `{"config": ...}` for `from_pretrained`. Unknown names are refused, since
    `from_pretrained` would pass them on to the model's constructor."""
    overrides = settings.get("config")
    if not overrides:
        return {}
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"model.config with init: pretrained must be a mapping of config attributes to change, got {overrides!r}."
        )
    config = AutoConfig.from_pretrained(settings["path"], trust_remote_code=False)
    unknown = sorted(name for name in overrides if not hasattr(config, name))
    if unknown:
        raise ConfigError(f"model.config: {unknown} are not attributes of the checkpoint's {type(config).__name__}.")
    for name, value in overrides.items():
        setattr(config, name, value)
    return {"config": config}


def load_model(settings: dict, dtype: str = "float32") -> tuple[HarmonForConditionalGeneration, object]:
    """(model, tokenizer) for `settings` = the config's `model` section (`path` may come from `--model`)."""
    if settings["init"] == "from_config":
        model, tokenizer = build_new_model(settings)
    else:
        if not settings.get("path"):
            raise ConfigError("model.init=pretrained needs --model PATH_OR_REPO (or model.path in the config).")
        model = AutoModel.from_pretrained(settings["path"], trust_remote_code=False, **_config_overrides(settings))
        if not isinstance(model, HarmonForConditionalGeneration):
            raise ConfigError(f"--model {settings['path']!r} is a {type(model).__name__}, not a Harmon checkpoint.")
        tokenizer = _tokenizer_with_image_token(settings["path"])
        if settings.get("tokenizer"):
            new = _tokenizer_with_image_token(settings["tokenizer"])
            tokenizer = _grow_vocabulary(model, tokenizer, new, settings.get("new_token_init", "mean"))
        if settings.get("llm_depth") is not None:
            try:
                grow_llm_depth(model, settings["llm_depth"])
            except ValueError as error:
                raise ConfigError(str(error)) from None
    return model.to(getattr(torch, dtype)), tokenizer


def _grow_vocabulary(model: HarmonForConditionalGeneration, old, new, init: str = "mean"):
    """Give `model` the tokenizer `new`, which must keep every token of its own tokenizer `old` at the same id (else
    the trained embedding rows would mean other words): the table grows to `len(new)`, the old rows unchanged, the
    new ones drawn around their mean (`init="mean"`: transformers' `resize_token_embeddings`, seeded by the run's
    seed) or copies of the unknown token's row (`init="unk"`: the model reads the new words as it read them before)."""
    moved = sorted(token for token, index in old.get_vocab().items() if new.get_vocab().get(token) != index)
    if moved:
        raise ConfigError(
            f"model.tokenizer must keep the checkpoint's tokens at their ids; {len(moved)} differ or are missing "
            f"(e.g. {moved[:5]}). Build it with the checkpoint's words first, new ones after."
        )
    for name in ("image_token_id", "pad_token_id", "eos_token_id"):
        if getattr(new, name) != getattr(old, name):
            raise ConfigError(
                f"model.tokenizer's {name} ({getattr(new, name)}) is not the checkpoint's ({getattr(old, name)})."
            )
    rows = model.get_input_embeddings().num_embeddings
    if len(new) > rows:
        model.resize_token_embeddings(len(new), mean_resizing=init == "mean")
        if init == "unk":
            if old.unk_token_id is None:
                raise ConfigError("model.new_token_init='unk' needs a tokenizer with an unknown token.")
            with torch.no_grad():
                table = model.get_input_embeddings().weight
                table[rows:] = table[old.unk_token_id]
    return new
