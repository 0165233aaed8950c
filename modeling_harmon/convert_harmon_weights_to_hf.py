"""Convert a reference Harmon checkpoint (`harmon_*.pth` + `kl16.ckpt`) into a Hugging Face model folder.

    python -m modeling_harmon.convert_harmon_weights_to_hf --harmon-ckpt harmon_0.5b.pth --vae-ckpt kl16.ckpt \
        --tokenizer Qwen2.5-0.5B-Instruct/ --llm-config Qwen2.5-0.5B-Instruct/ --mar-config harmon-0.5b --output out/

Everything the weights reveal (widths, depths, buffer size, grid, diffusion-head size, VAE layout) is read from
their shapes and checked against the settings given; the rest (attention heads, sampling steps, mask ratio, batch
multiplier, VAE scale) comes from `--mar-config`. Missing or unexpected tensors are refused, never skipped.
"""

import argparse
import copy
import json
import math
import os
import re
import warnings
from pathlib import Path

import torch

from .configuration_harmon import DEFAULT_IMAGE_GENERATION, HARMON_PRESETS, KL16_VAE_CONFIG, HarmonConfig
from .output_folders import check_output_folder, replace_folder


# Named sampling presets written into every converted checkpoint (`sampling="fast"`, `--sampling fast`): half the
# reference's MAR iterations and diffusion-head steps. Their time on the anchor cell is in benchmarks/NOTES.md;
# their quality is not measured (that needs the released weights), so the default stays the reference's sampling.
RELEASED_SAMPLING_PRESETS = {"fast": {"num_iter": 32, "num_sampling_steps": 50}}


# Tensors dropped on purpose: MAR's class embedding (Harmon never uses it).
DROPPED_HARMON_KEYS = ("mar.class_emb.weight",)
# Non-VAE parts that a VAE training checkpoint may carry (LPIPS / discriminator of the training loss).
DROPPED_VAE_PREFIXES = ("loss.",)

# Reference (LDM/MAR) key -> HF key, in order; the first matching pattern wins.
_HARMON_KEY_RULES = [
    (r"^llm\.model\.(.*)$", r"model.language_model.\1"),
    (r"^llm\.lm_head\.weight$", r"lm_head.weight"),
    (r"^mar\.fake_latent$", r"model.mar_encoder.buffer_embed"),
    (r"^mar\.encoder_pos_embed_learned$", r"model.mar_encoder.position_embed"),
    (r"^mar\.z_proj\.(weight|bias)$", r"model.mar_encoder.token_embed.\1"),
    (r"^mar\.z_proj_ln\.(weight|bias)$", r"model.mar_encoder.token_norm.\1"),
    (r"^mar\.encoder_blocks\.(.*)$", r"model.mar_encoder.layers.\1"),
    (r"^mar\.encoder_norm\.(weight|bias)$", r"model.mar_encoder.norm.\1"),
    (r"^mar\.decoder_embed\.(weight|bias)$", r"model.mar_decoder.embed.\1"),
    (r"^mar\.mask_token$", r"model.mar_decoder.mask_token"),
    (r"^mar\.decoder_pos_embed_learned$", r"model.mar_decoder.position_embed"),
    (r"^mar\.decoder_blocks\.(.*)$", r"model.mar_decoder.layers.\1"),
    (r"^mar\.decoder_norm\.(weight|bias)$", r"model.mar_decoder.norm.\1"),
    (r"^mar\.diffusion_pos_embed_learned$", r"model.mar_decoder.diffusion_position_embed"),
    (r"^mar\.diffloss\.net\.(.*)$", r"model.diffusion_head.\1"),
    (r"^(proj_in|proj_out)\.(.*)$", r"model.\1.\2"),
]

# MAR constructor argument -> HarmonConfig field.
_MAR_ARGUMENTS = {
    "encoder_embed_dim": "encoder_hidden_size",
    "encoder_depth": "encoder_num_layers",
    "encoder_num_heads": "encoder_num_heads",
    "decoder_embed_dim": "decoder_hidden_size",
    "decoder_depth": "decoder_num_layers",
    "decoder_num_heads": "decoder_num_heads",
    "mlp_ratio": "mlp_ratio",
    "buffer_size": "buffer_size",
    "img_size": "image_size",
    "patch_size": "patch_size",
    "mask_ratio_min": "mask_ratio_min",
    "attn_dropout": "attention_dropout",
    "proj_dropout": "hidden_dropout",
    "diffloss_d": "diffusion_head_depth",
    "diffloss_w": "diffusion_head_width",
    "num_sampling_steps": "num_sampling_steps",
    "diffusion_batch_mul": "diffusion_batch_mul",
}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted faithfully."""


class UnreadableCheckpointError(ConversionError):
    """A checkpoint file that torch or safetensors cannot read as tensors only; `path` is the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(
            f"{str(path)!r} is not a readable PyTorch or safetensors checkpoint ({reason}); harmon loads tensors "
            "only and never runs code stored in a checkpoint."
        )
        self.path = Path(path)


def _unreadable_reason(error: Exception) -> str:
    """Why torch.load refused a file, in words that do not send the user to unsafe loading (torch's own message
    suggests it)."""
    text = str(error)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        named = f", e.g. {found.group(1)}" if found else ""
        return f"it holds Python objects or pickle instructions, not just tensors{named}"
    if isinstance(error, EOFError) or not text:
        return "it ends early: empty or truncated"
    if "zip archive" in text:
        return "it is truncated or corrupt: its zip archive is damaged"
    return f"it is truncated or not a checkpoint ({type(error).__name__})"


def load_legacy_state_dict(path: str | os.PathLike, wrapper_key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a `torch.save`d (weights only) or safetensors state dict; `wrapper_key` unwraps e.g. `{"model": sd}`.

    torch.load runs with `weights_only=True`, so a pickle that would run code is refused, not executed; every
    failure to read is an [`UnreadableCheckpointError`]."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise UnreadableCheckpointError(path, "the file is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                # e.g. "Detected pickle protocol 4": noise on stderr that names the unsafe way out
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:
        if path.suffix == ".safetensors":
            raise UnreadableCheckpointError(path, f"safetensors: {error}") from None
        raise UnreadableCheckpointError(path, _unreadable_reason(error)) from None
    if (
        wrapper_key is not None
        and isinstance(state, dict)
        and wrapper_key in state
        and isinstance(state[wrapper_key], dict)
    ):
        state = state[wrapper_key]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ConversionError(
            f"{path} is not a flat state dict of tensors (top level: {keys}). The reference loads it with "
            "load_state_dict(strict=False), so a wrapped checkpoint (e.g. {'state_dict': ...}) would load nothing; "
            "unwrap it first."
        )
    return state


# --------------------------------------------------------------------------------------------------- settings
def _load_json_or_preset(value: str, argument: str = "--mar-config") -> tuple[str, dict]:
    if value in HARMON_PRESETS:
        return "preset", HARMON_PRESETS[value]
    path = Path(value)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{argument} {value!r} is neither a preset ({sorted(HARMON_PRESETS)}) nor a JSON file or a folder "
            "holding config.json."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConversionError(f"{argument} {value!r}: {path} is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise ConversionError(f"{argument} {value!r}: {path} is not valid JSON ({error.msg} at {where}).") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{argument} {value!r}: {path} must hold a JSON object, got {type(data).__name__}.")
    return "json", data


def text_config_from(value: str, argument: str = "--llm-config"):
    """A Qwen2 config from a folder holding `config.json`, or from a preset name."""
    from transformers import AutoConfig

    kind, data = _load_json_or_preset(value, argument)
    if kind == "preset":
        return HarmonConfig(text_config=copy.deepcopy(data["text_config"])).text_config
    try:
        return AutoConfig.from_pretrained(str(Path(value) if Path(value).is_dir() else Path(value).parent))
    except Exception as error:  # transformers' config classes raise several types (e.g. a strict field check)
        raise ConversionError(f"{argument} {value!r}: not a usable LLM config ({error})") from None


# MAR constructor arguments that take any number; the others of `_MAR_ARGUMENTS` take integers.
_MAR_NUMBER_ARGUMENTS = ("mlp_ratio", "mask_ratio_min", "attn_dropout", "proj_dropout")


def _check_json_type(value, shown: str, field: str, kind: str) -> None:
    """Refuse a --mar-config field of the wrong JSON type, naming it (`shown`: the argument and its value):
    `build_config` would fail with a bare "could not convert string to float"."""
    if kind == "number":
        fits = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind == "integer list":
        fits = isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    elif kind == "object":
        fits = isinstance(value, dict)
    else:
        fits = isinstance(value, int) and not isinstance(value, bool)
    if not fits:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ConversionError(f'{shown} "{field}" must be {article} {kind}, got {json.dumps(value)}.')


def harmon_settings_from(value: str, argument: str = "--mar-config") -> dict:
    """HarmonConfig keyword arguments (without `text_config`) from a preset or a vector-set style JSON.

    The JSON's `mar` object holds the reference's MAR constructor arguments; optional `vae` (`embed_dim`,
    `ch_mult`, `ch`) and `harmon.vae_scale` describe the VAE. Types are checked here, values against the weights
    later.
    """
    kind, data = _load_json_or_preset(value, argument)
    if kind == "preset":
        settings = {key: val for key, val in copy.deepcopy(data).items() if key != "text_config"}
        settings["vae_config"] = copy.deepcopy(KL16_VAE_CONFIG)
        return settings
    if "mar" not in data:
        raise ConversionError(f"{argument} {value!r} has no 'mar' object with the MAR constructor arguments.")
    shown = f"{argument} {value!r}:"
    for section in ("mar", "vae", "harmon"):
        if section in data:
            _check_json_type(data[section], shown, section, "object")
    mar = data["mar"]
    for arg in (*_MAR_ARGUMENTS, "vae_stride", "vae_embed_dim"):
        if mar.get(arg) is None:
            continue
        if arg == "num_sampling_steps" and isinstance(mar[arg], str) and mar[arg].isdigit():
            continue  # the reference passes it as a string, e.g. '100'
        _check_json_type(mar[arg], shown, f"mar.{arg}", "number" if arg in _MAR_NUMBER_ARGUMENTS else "integer")
    vae = data.get("vae", {})
    for field, kind in (
        ("embed_dim", "integer"),
        ("ch", "integer"),
        ("ch_mult", "integer list"),
        ("groupnorm_groups", "integer"),
    ):
        if vae.get(field) is not None:
            _check_json_type(vae[field], shown, f"vae.{field}", kind)
    if data.get("harmon", {}).get("vae_scale") is not None:
        _check_json_type(data["harmon"]["vae_scale"], shown, "harmon.vae_scale", "number")
    settings = {field: mar[arg] for arg, field in _MAR_ARGUMENTS.items() if arg in mar}
    if "num_sampling_steps" in settings:
        settings["num_sampling_steps"] = int(settings["num_sampling_steps"])
    expected = {"vae_stride": mar.get("vae_stride"), "token_dim": mar.get("vae_embed_dim")}
    scale = data.get("harmon", {}).get("vae_scale", KL16_VAE_CONFIG["scaling_factor"])
    settings["_vae_hints"] = {
        "embed_dim": vae.get("embed_dim", mar.get("vae_embed_dim")),
        "ch_mult": vae.get("ch_mult"),
        "ch": vae.get("ch"),
        "norm_num_groups": vae.get("groupnorm_groups", 32),
        "scaling_factor": scale,
        "vae_stride": expected["vae_stride"],
    }
    return settings


# -------------------------------------------------------------------------------------------------------- VAE
def vae_config_from_ldm(vae_state: dict[str, torch.Tensor], hints: dict, sample_size: int) -> dict:
    """Infer `diffusers.AutoencoderKL` kwargs from LDM key names and shapes, checking them against `hints`."""
    ch = vae_state["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for key in vae_state if (m := re.match(r"encoder\.down\.(\d+)\.", key))})
    blocks = sorted(
        {int(m.group(1)) for key in vae_state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", key))}
    )
    channels = [vae_state[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] for level in levels]
    attention = [any(key.startswith(f"encoder.down.{level}.attn.") for key in vae_state) for level in levels]
    if any(key.startswith("decoder.up.") and ".attn." in key for key in vae_state):
        raise ConversionError("VAE decoder up-block attention is not supported by this converter.")
    embed_dim = vae_state["post_quant_conv.weight"].shape[0]
    ch_mult = [c // ch for c in channels]
    found = {"embed_dim": embed_dim, "ch": ch, "ch_mult": ch_mult, "vae_stride": 2 ** (len(levels) - 1)}
    for name, value in found.items():
        hint = hints.get(name)
        if hint is not None and (list(hint) if isinstance(hint, (list, tuple)) else hint) != value:
            raise ConversionError(f"VAE setting {name}={hint} contradicts the VAE weights, which give {value}.")
    return {
        "in_channels": vae_state["encoder.conv_in.weight"].shape[1],
        "out_channels": vae_state["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["AttnDownEncoderBlock2D" if attn else "DownEncoderBlock2D" for attn in attention],
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": len(blocks),
        "act_fn": "silu",
        "latent_channels": embed_dim,
        "norm_num_groups": int(hints.get("norm_num_groups", 32)),  # LDM's GroupNorm uses 32 groups
        "sample_size": sample_size,
        "scaling_factor": float(hints.get("scaling_factor", KL16_VAE_CONFIG["scaling_factor"])),
    }


def convert_vae_state_dict(vae_state: dict[str, torch.Tensor], vae_config: dict) -> dict[str, torch.Tensor]:
    """LDM VAE keys -> diffusers `AutoencoderKL` keys.

    diffusers' `convert_ldm_vae_checkpoint` assumes attention-free encoder down blocks and would pass the
    `encoder.down.{l}.attn.*` tensors through under their LDM names; those are split off and mapped here.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, update_vae_attentions_ldm_to_diffusers

    attention = {key: value for key, value in vae_state.items() if re.match(r"encoder\.down\.\d+\.attn\.", key)}
    rest = {key: value for key, value in vae_state.items() if key not in attention}
    converted = convert_ldm_vae_checkpoint(rest, vae_config)
    for level, index in sorted(
        {tuple(map(int, re.match(r"encoder\.down\.(\d+)\.attn\.(\d+)\.", key).groups())) for key in attention}
    ):
        keys = [key for key in attention if key.startswith(f"encoder.down.{level}.attn.{index}.")]
        update_vae_attentions_ldm_to_diffusers(
            keys,
            converted,
            attention,
            mapping={"old": f"down.{level}.attn.{index}", "new": f"down_blocks.{level}.attentions.{index}"},
        )
    return converted


# ---------------------------------------------------------------------------------------------------- Harmon
def _count(state, pattern: str) -> int:
    return len({m.group(1) for key in state if (m := re.match(pattern, key))})


def infer_harmon_shapes(harmon_state: dict[str, torch.Tensor]) -> dict:
    """Every HarmonConfig field that the reference weights reveal."""
    diffusion_rows = harmon_state["mar.diffusion_pos_embed_learned"].shape[1]
    side = math.isqrt(diffusion_rows)
    if side * side != diffusion_rows:
        raise ConversionError(f"mar.diffusion_pos_embed_learned has {diffusion_rows} rows, not a square grid.")
    width = harmon_state["mar.fake_latent"].shape[1]
    return {
        "encoder_hidden_size": width,
        "decoder_hidden_size": harmon_state["mar.mask_token"].shape[2],
        "encoder_num_layers": _count(harmon_state, r"mar\.encoder_blocks\.(\d+)\."),
        "decoder_num_layers": _count(harmon_state, r"mar\.decoder_blocks\.(\d+)\."),
        "mlp_ratio": harmon_state["mar.encoder_blocks.0.mlp.fc1.weight"].shape[0] / width,
        "buffer_size": harmon_state["mar.encoder_pos_embed_learned"].shape[1] - diffusion_rows,
        "diffusion_head_depth": _count(harmon_state, r"mar\.diffloss\.net\.res_blocks\.(\d+)\."),
        "diffusion_head_width": harmon_state["mar.diffloss.net.input_proj.weight"].shape[0],
        "_grid_side": side,
        "_token_dim": harmon_state["mar.z_proj.weight"].shape[1],
        "_text_hidden": harmon_state["proj_in.0.weight"].shape[0],
    }


def convert_harmon_state_dict(harmon_state: dict[str, torch.Tensor], tie_word_embeddings: bool):
    """Reference keys -> HF keys. Returns (state dict, dropped keys). Unknown keys raise."""
    converted, dropped, unknown = {}, [], []
    for key, value in harmon_state.items():
        if key in DROPPED_HARMON_KEYS:
            dropped.append(key)
            continue
        for pattern, replacement in _HARMON_KEY_RULES:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"Unexpected keys in the Harmon checkpoint ({len(unknown)}): {sorted(unknown)}")
    embed = converted.get("model.language_model.embed_tokens.weight")
    if tie_word_embeddings and "lm_head.weight" in converted:
        if embed is None or not torch.equal(converted["lm_head.weight"], embed):
            raise ConversionError("The LLM config ties lm_head to embed_tokens but the checkpoint's lm_head differs.")
        del converted["lm_head.weight"]
        dropped.append("llm.lm_head.weight (tied to llm.model.embed_tokens.weight)")
    return converted, dropped


def build_config(harmon_state, vae_state, text_config, settings: dict) -> HarmonConfig:
    """Combine what the weights reveal with the given settings, refusing contradictions."""
    settings = copy.deepcopy(settings)
    hints = settings.pop("_vae_hints", {"scaling_factor": settings.get("vae_config", {}).get("scaling_factor")})
    preset_vae = settings.pop("vae_config", None)
    shapes = infer_harmon_shapes(harmon_state)
    for field, value in shapes.items():
        if field.startswith("_"):
            continue
        given = settings.get(field)
        if given is not None and not math.isclose(float(given), float(value)):
            raise ConversionError(f"--mar-config sets {field}={given} but the Harmon weights give {value}.")
        settings[field] = value
    stride_hint = hints.get("vae_stride")
    vae_config = vae_config_from_ldm(vae_state, hints, sample_size=settings.get("image_size") or 256)
    if preset_vae is not None:
        vae_config["scaling_factor"] = preset_vae["scaling_factor"]
    vae_stride = 2 ** (len(vae_config["block_out_channels"]) - 1)
    if stride_hint is not None and stride_hint != vae_stride:
        raise ConversionError(f"--mar-config sets vae_stride={stride_hint} but the VAE weights give {vae_stride}.")
    patch = settings.get("patch_size", 1)
    if shapes["_token_dim"] != vae_config["latent_channels"] * patch**2:
        raise ConversionError(
            f"mar.z_proj takes {shapes['_token_dim']}-dim tokens but the VAE has {vae_config['latent_channels']} "
            f"latent channels and patch_size={patch}."
        )
    image_size = shapes["_grid_side"] * vae_stride * patch
    if settings.get("image_size") not in (None, image_size):
        raise ConversionError(
            f"--mar-config sets img_size={settings['image_size']} but the weights give {image_size}."
        )
    settings["image_size"] = vae_config["sample_size"] = image_size
    if shapes["_text_hidden"] != text_config.hidden_size:
        raise ConversionError(
            f"proj_in outputs {shapes['_text_hidden']} features but the LLM config has hidden_size={text_config.hidden_size}."
        )
    embed_rows = harmon_state["llm.model.embed_tokens.weight"].shape[0]
    layers = _count(harmon_state, r"llm\.model\.layers\.(\d+)\.")
    if embed_rows != text_config.vocab_size or layers != text_config.num_hidden_layers:
        raise ConversionError(
            f"The LLM weights have vocab {embed_rows} and {layers} layers but the LLM config says "
            f"vocab_size={text_config.vocab_size}, num_hidden_layers={text_config.num_hidden_layers}."
        )
    for field in ("encoder_num_heads", "decoder_num_heads"):
        if field not in settings:
            raise ConversionError(f"--mar-config must give {field} (attention heads cannot be read from weights).")
    text = {key: value for key, value in text_config.to_dict().items() if key != "_name_or_path"}
    # The released checkpoints were trained for generation and understanding (the paper's stages), not editing: the
    # editing pipeline warns on them.
    settings.setdefault("trained_tasks", ["text2image", "image2text"])
    return HarmonConfig(text_config=text, vae_config=vae_config, **settings)


def _prepare_tokenizer(tokenizer_dir: str, argument: str = "--tokenizer"):
    from huggingface_hub import constants
    from huggingface_hub.utils import validate_repo_id
    from transformers import AutoTokenizer

    path = Path(tokenizer_dir)
    if path.exists() and not path.is_dir():
        raise ConversionError(f"{argument} {tokenizer_dir!r} is a file; give the tokenizer's folder.")
    if not path.is_dir():
        # transformers would answer a mistyped folder with a Hub rule ("Repo id must be ...").
        try:
            validate_repo_id(tokenizer_dir)
            repo_id = True
        except ValueError:
            repo_id = False
        if not repo_id or constants.HF_HUB_OFFLINE:
            offline = " (Hub repo ids are not fetched: HF_HUB_OFFLINE is set)" if repo_id else ""
            raise ConversionError(f"{argument} {tokenizer_dir!r}: no such folder{offline}.")
    try:
        plain = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as error:
        what = "the folder" if path.is_dir() else "there is no such folder, nor a Hub repo of that id"
        raise ConversionError(f"{argument} {tokenizer_dir!r}: cannot load a tokenizer ({what}: {error})") from None
    if "<image>" in plain.get_vocab():
        return _without_load_options(plain), plain.convert_tokens_to_ids("<image>")
    image_token_id = len(plain)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, extra_special_tokens={"image_token": "<image>"})
    if tokenizer.image_token_id != image_token_id:
        raise ConversionError(
            f"<image> got id {tokenizer.image_token_id}, expected len(tokenizer) = {image_token_id}."
        )
    return _without_load_options(tokenizer), image_token_id


def _without_load_options(tokenizer):
    """transformers keeps the load-time `local_files_only` (True under HF_HUB_OFFLINE=1) among a tokenizer's init kwargs
    and saves it; a converted checkpoint should not depend on whether the conversion ran offline."""
    tokenizer.init_kwargs.pop("local_files_only", None)
    return tokenizer


def convert_harmon_checkpoint(
    harmon_ckpt: str | os.PathLike,
    vae_ckpt: str | os.PathLike | None,
    tokenizer: str | os.PathLike,
    llm_config: str,
    mar_config: str,
    output: str | os.PathLike,
    verbose: bool = True,
    finalize=None,
    image_size: int | None = None,
    overwrite: bool = False,
):
    """Convert and save; returns the loaded `HarmonForConditionalGeneration` (fp32, eval mode).

    `vae_ckpt` may be None when the Harmon checkpoint carries `vae.*` tensors. The output folder is written
    atomically (a temporary sibling folder renamed at the end); an existing one is replaced only if an earlier
    harmon writer made it and `overwrite` is set, never if it holds an input (see `output_folders`). `finalize(folder, model, tokenizer)`, if given,
    adds files to the folder before that rename (`harmon convert` uses it to write the full Hub layout).
    `image_size` makes that size the checkpoint's default for generation (and for the exported processor); the
    default is the native size of the position embeddings.
    """
    from transformers import GenerationConfig

    from .modeling_harmon import HarmonForConditionalGeneration

    inputs = [harmon_ckpt, vae_ckpt, tokenizer, llm_config, mar_config]
    check_output_folder(output, overwrite, inputs)  # before the slow part
    harmon_state = load_legacy_state_dict(harmon_ckpt)
    vae_state = {key[len("vae.") :]: value for key, value in harmon_state.items() if key.startswith("vae.")}
    harmon_state = {key: value for key, value in harmon_state.items() if not key.startswith("vae.")}
    if not any(key.startswith(("llm.", "mar.")) for key in harmon_state):
        raise ConversionError(
            f"{harmon_ckpt} holds no llm.* / mar.* tensors: is it a Harmon checkpoint (flat, unwrapped)?"
        )
    if vae_ckpt is not None:
        vae_state = load_legacy_state_dict(vae_ckpt, wrapper_key="model")
    if not vae_state:
        raise ConversionError("No VAE weights: pass --vae-ckpt (kl16.ckpt) or a Harmon checkpoint with vae.* keys.")
    dropped_vae = sorted(key for key in vae_state if key.startswith(DROPPED_VAE_PREFIXES))
    vae_state = {key: value for key, value in vae_state.items() if not key.startswith(DROPPED_VAE_PREFIXES)}

    text_config = text_config_from(str(llm_config))
    settings = harmon_settings_from(str(mar_config))
    tok, image_token_id = _prepare_tokenizer(str(tokenizer))
    settings.setdefault("pad_token_id", tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    settings.setdefault("eos_token_id", tok.eos_token_id)
    settings["image_token_id"] = image_token_id
    config = build_config(harmon_state, vae_state, text_config, settings)

    state, dropped = convert_harmon_state_dict(harmon_state, config.tie_word_embeddings)
    vae_converted = convert_vae_state_dict(vae_state, config.vae_config)
    state.update({f"model.vae.{key}": value for key, value in vae_converted.items()})

    model = HarmonForConditionalGeneration(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ConversionError(f"Converted weights do not fit the model. Missing: {missing}. Unexpected: {unexpected}.")
    for key, value in state.items():
        target = model.state_dict()[key]
        if target.shape != value.shape:
            raise ConversionError(
                f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(target.shape)}."
            )
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.eval()

    generation = {
        "image_generation": dict(DEFAULT_IMAGE_GENERATION),
        "image_generation_presets": copy.deepcopy(RELEASED_SAMPLING_PRESETS),
    }
    if image_size is not None:
        stride = config.vae_stride * config.patch_size
        if not isinstance(image_size, int) or image_size <= 0 or image_size % stride:
            raise ConversionError(f"--image-size must be a positive multiple of {stride}, got {image_size!r}.")
        generation["image_generation"].update(height=image_size, width=image_size)
    llm_generation = Path(str(llm_config)) / "generation_config.json"
    if llm_generation.is_file():
        generation = {**json.loads(llm_generation.read_text()), **generation}
    for key in ("transformers_version", "_from_model_config"):
        generation.pop(key, None)
    generation.setdefault("eos_token_id", config.eos_token_id)
    generation.setdefault("pad_token_id", config.pad_token_id)
    model.generation_config = GenerationConfig(**generation)

    with replace_folder(output, "harmon convert", overwrite, inputs) as staging:
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        if finalize is not None:
            finalize(staging, model, tok)
    if verbose:
        print(f"Converted {len(state)} tensors into {output}")
        for key in dropped + [f"{key} (VAE checkpoint, not part of the VAE)" for key in dropped_vae]:
            print(f"  dropped: {key}")
    return model


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's flags (shared with `harmon convert`)."""
    parser.add_argument("--harmon-ckpt", required=True, help="reference harmon_*.pth (flat state dict)")
    parser.add_argument(
        "--vae-ckpt", default=None, help="kl16.ckpt ({'model': state_dict}); optional if the .pth has vae.*"
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (Qwen2.5-Instruct)")
    parser.add_argument("--llm-config", required=True, help="folder with the Qwen2 config.json, or a preset name")
    parser.add_argument("--mar-config", required=True, help="JSON with a 'mar' object (MAR arguments), or a preset")
    parser.add_argument(
        "--output", required=True, help="output folder (new, empty, or an earlier output with --overwrite)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if an earlier harmon command wrote it (other folders are never replaced)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="default image side for generation and understanding (the reference scripts use 512; default: the "
        "native size of the position embeddings, 256 for the released models)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    args = parser.parse_args(argv)
    try:
        convert_harmon_checkpoint(
            args.harmon_ckpt,
            args.vae_ckpt,
            args.tokenizer,
            args.llm_config,
            args.mar_config,
            args.output,
            image_size=args.image_size,
            overwrite=args.overwrite,
        )
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
