"""Image-generation settings of Harmon: one object that every entry point resolves and validates.

The model (`generate_images`), the diffusers and transformers pipelines, the `harmon` command (single and batch
modes) and ShapesEval all build a [`HarmonImageGenerationSettings`] through [`resolve_image_generation_settings`]:
the fields' defaults, then the checkpoint's stored defaults (`generation_config.image_generation`), then a named
preset of the checkpoint (`generation_config.image_generation_presets`), then what the caller gave. The names users
know from other libraries (`num_inference_steps`) and the command's flags (`--steps`) are declared once, in each
field's metadata, so that no entry point keeps its own map.

A bad value raises [`HarmonSettingError`], a `ValueError` whose `field` (the setting) and `argument` (the name the
caller used for it) are data, not only words of the message.

This file is uploaded with the model code (remote code), so it imports only the standard library.
"""

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any


EDIT_MODES = ("direct", "describe")
PROMPT_MODES = ("direct", "describe", "auto")
# Drawings per image for best-of-N ranking (`candidates`): each costs a full sampling run.
MAX_CANDIDATES = 32


class HarmonSettingError(ValueError):
    """An image-generation setting that cannot be used. `field`: the setting's name (a field of
    [`HarmonImageGenerationSettings`], or "sampling": the name of a preset); `argument`: the name the caller passed it
    under."""

    def __init__(self, field: str, message: str, argument: str | None = None):
        self.field = field
        self.argument = argument or field
        super().__init__(f"{self.argument} {message}")


def _setting(default, help: str, flag: str | None = None, alias: str | None = None, stored: bool = True):
    """A settings field. `flag`: the `harmon` command's flag; `alias`: the other name callers may use (diffusers');
    `stored`: whether checkpoints keep a default for it in `generation_config.image_generation`."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "alias": alias, "stored": stored})


@dataclasses.dataclass
class HarmonImageGenerationSettings:
    """Every setting of Harmon's image generation (see the module docstring for where values come from).

    The defaults are the reference sampler's (the released checkpoints'); `None` sizes and head steps mean the
    model's `config.image_size` and `config.num_sampling_steps`.
    """

    height: int | None = _setting(None, "image height in pixels, a multiple of the token stride", flag="--size")
    width: int | None = _setting(None, "image width in pixels, a multiple of the token stride", flag="--size")
    num_iter: int = _setting(64, "MAR iterations (1 .. number of tokens drawn)", "--steps", "num_inference_steps")
    guidance_scale: float = _setting(3.0, "classifier-free guidance scale of the text (>= 1; 1 = off)", "--cfg")
    cfg_schedule: str = _setting("constant", "'constant', or 'linear' (ramps from 1)", "--cfg-schedule")
    temperature: float = _setting(1.0, "scale of the diffusion head's noise (> 0)", "--temperature")
    num_sampling_steps: int | None = _setting(None, "diffusion-head steps per token", "--head-steps")
    x0_clamp: float | None = _setting(None, "clamp of the head's x0 prediction (None: none)", "--x0-clamp")
    # For image-conditioned generation: the share of an init image's tokens redrawn, and the guidance scale of the
    # context images an instruction refers to. 1 leaves text-to-image unchanged.
    strength: float = _setting(
        1.0, "share of the init image's tokens redrawn (0 <= strength <= 1)", "--strength", stored=False
    )
    image_guidance_scale: float = _setting(
        1.0, "classifier-free guidance scale of the context images (>= 1; 1 = off)", "--image-cfg", stored=False
    )
    # How an instruction about context images is followed: "direct" draws with the images in view (their features in
    # the prompt); "describe" first has the model write what the edited picture shows (its understanding path, greedy)
    # and then draws that text. A checkpoint stores the way it was trained for.
    edit_mode: str = _setting(
        "direct",
        "'direct' (draw with the images in view) or 'describe' (write the result, then draw it)",
        "--edit-mode",
    )
    # How a text prompt is drawn: "direct" as given; "describe" first has the model restate it in the words its
    # drawing was trained on (its understanding path, greedy; e.g. free phrasing -> a canonical caption), then draws
    # that; "auto" restates only a prompt with words the drawing path never learned (embedding rows that are the
    # unknown token's). A checkpoint stores the way it was trained for. Prompts with context images follow `edit_mode`.
    prompt_mode: str = _setting(
        "direct",
        "'direct' (draw the prompt as given), 'describe' (restate it in the model's words, then draw that) or 'auto' "
        "(restate only prompts with words the drawing never learned)",
        "--prompt-mode",
    )

    # Best of N: each image is drawn `candidates` times (the generator drives them one after another) and the model
    # keeps the drawing its understanding path reads as the drawn text most likely: the log-likelihood of the text as
    # the answer to the checkpoint's `config.reading_prompt` about the drawing. A unified model checking its own
    # drawing; only a checkpoint that stores a reading prompt (one trained to caption with it) can rank.
    candidates: int = _setting(
        1,
        "drawings made per image; the one the model's own reading finds most likely to show the prompt is kept "
        "(1 = no ranking; needs config.reading_prompt)",
        "--candidates",
    )

    # ----------------------------------------------------------------------------------------------- names
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Other name -> field (e.g. diffusers' `num_inference_steps` -> `num_iter`)."""
        return {field.metadata["alias"]: field.name for field in dataclasses.fields(cls) if field.metadata["alias"]}

    @classmethod
    def flags(cls) -> dict[str, str]:
        """Field -> the `harmon` command's flag."""
        return {field.name: field.metadata["flag"] for field in dataclasses.fields(cls) if field.metadata["flag"]}

    @classmethod
    def stored_defaults(cls) -> dict[str, Any]:
        """What a checkpoint stores in `generation_config.image_generation` when nothing else is known."""
        return {field.name: field.default for field in dataclasses.fields(cls) if field.metadata["stored"]}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------------------------------- validation
    def validate(self, config, arguments: Mapping[str, str] | None = None) -> "HarmonImageGenerationSettings":
        """Check every value against the model's `config` (token stride, head steps, LLM positions); returns self.
        Raises [`HarmonSettingError`] for the first bad value, named as in `arguments` (field -> caller's name)."""
        arguments = dict(arguments or {})

        def fail(field: str, message: str):
            raise HarmonSettingError(field, message, arguments.get(field))

        stride = config.vae_stride * config.patch_size
        for name in ("height", "width"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0 or value % stride:
                fail(name, f"must be a positive multiple of {stride} (VAE stride x patch size), got {value!r}.")
        seq_len = (self.height // stride) * (self.width // stride)
        # Image tokens, buffers and a prompt of at least one token share the LLM's positions; checked before
        # anything is allocated.
        limit = getattr(config.text_config, "max_position_embeddings", None)
        if limit is not None and seq_len + config.buffer_size + 1 > limit:
            raise HarmonSettingError(
                "height",
                f"and width ({self.height} x {self.width}) give {seq_len} image tokens, which with "
                f"{config.buffer_size} buffers and a prompt do not fit in the language model's "
                f"max_position_embeddings ({limit}); choose a smaller size.",
                "height" if "height" not in arguments else arguments["height"],
            )
        if not _is_int(self.num_iter) or not 1 <= self.num_iter <= seq_len:
            fail(
                "num_iter",
                f"must be an integer in [1, {seq_len}] (the number of image tokens), got {self.num_iter!r}.",
            )
        for name in ("guidance_scale", "image_guidance_scale"):
            scale = getattr(self, name)
            if not _is_number(scale) or not math.isfinite(scale) or scale < 1.0:
                fail(name, f"must be a finite number >= 1 (1 disables guidance), got {scale!r}.")
        if self.cfg_schedule not in ("constant", "linear"):
            fail("cfg_schedule", f"must be 'constant' or 'linear', got {self.cfg_schedule!r}.")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature <= 0:
            fail("temperature", f"must be a finite number > 0, got {self.temperature!r}.")
        steps = self.num_sampling_steps
        if not _is_int(steps) or not 1 <= steps <= config.num_train_timesteps:
            fail("num_sampling_steps", f"must be an integer in [1, {config.num_train_timesteps}], got {steps!r}.")
        if self.x0_clamp is not None and (not _is_number(self.x0_clamp) or not self.x0_clamp > 0):
            fail("x0_clamp", f"must be None or a number > 0, got {self.x0_clamp!r}.")
        if not _is_number(self.strength) or not 0.0 <= self.strength <= 1.0:
            fail("strength", f"must be a number in [0, 1], got {self.strength!r}.")
        if self.edit_mode not in EDIT_MODES:
            fail("edit_mode", f"must be one of {', '.join(map(repr, EDIT_MODES))}, got {self.edit_mode!r}.")
        if self.prompt_mode not in PROMPT_MODES:
            fail("prompt_mode", f"must be one of {', '.join(map(repr, PROMPT_MODES))}, got {self.prompt_mode!r}.")
        if not _is_int(self.candidates) or not 1 <= self.candidates <= MAX_CANDIDATES:
            fail("candidates", f"must be an integer in [1, {MAX_CANDIDATES}], got {self.candidates!r}.")
        return self


def sampling_name(sampling: str | None, preset: str | None = None) -> str | None:
    """The sampling preset asked for: `sampling`, or the older keyword `preset` (a FutureWarning: `preset` also names
    a model shape in the benchmarks, so the sampling one is now `sampling`). Both, differing, is an error."""
    if preset is None:
        return sampling
    warnings.warn(
        "preset= is renamed sampling= (the name of one of the model's sampling presets); preset= will be removed.",
        FutureWarning,
        stacklevel=3,
    )
    if sampling is not None and sampling != preset:
        raise HarmonSettingError("sampling", f"was given twice, as sampling={sampling!r} and preset={preset!r}.")
    return preset


def _is_int(value) -> bool:
    """An int but not a bool: `isinstance(True, int)` holds, yet `num_iter=True` is a mistake, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


DEFAULT_IMAGE_GENERATION = HarmonImageGenerationSettings.stored_defaults()


def canonical_settings(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(field -> value, field -> the name it was given under) for caller keyword arguments that may use aliases;
    `None` values mean "not given" and are dropped. Unknown names and a field given twice raise
    [`HarmonSettingError`]."""
    aliases = HarmonImageGenerationSettings.aliases()
    known = set(HarmonImageGenerationSettings.names())
    values, arguments = {}, {}
    for name, value in given.items():
        field = aliases.get(name, name)
        if field not in known:
            allowed = sorted(known | set(aliases))
            raise HarmonSettingError(field, f"is not an image-generation setting; known: {', '.join(allowed)}.")
        if value is None:
            continue
        if field in values:
            raise HarmonSettingError(field, f"was given twice (as {arguments[field]} and as {name}).")
        values[field], arguments[field] = value, name
    return values, arguments


def resolve_image_generation_settings(
    config,
    stored: Mapping[str, Any] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    preset: str | None = None,
    **given,
) -> HarmonImageGenerationSettings:
    """The validated settings for a model with `config`: the field defaults, then `stored`
    (`generation_config.image_generation`), then `presets[preset]` (`generation_config.image_generation_presets`),
    then `given` (keyword arguments; `None` = not given; aliases such as `num_inference_steps` accepted)."""
    values, arguments = canonical_settings(given)
    merged = HarmonImageGenerationSettings.stored_defaults()
    merged.update({key: value for key, value in (stored or {}).items() if value is not None})
    if preset is not None:
        if not isinstance(preset, str) or preset not in (presets or {}):
            names = sorted(presets or {})
            raise HarmonSettingError(
                "sampling", f"must be one of this model's sampling presets {names}, got {preset!r}."
            )
        merged.update({key: value for key, value in presets[preset].items() if value is not None})
    unknown = sorted(set(merged) - set(HarmonImageGenerationSettings.names()))
    if unknown:
        raise HarmonSettingError(unknown[0], "is stored in the generation config but is not a setting.")
    merged.update(values)
    merged.setdefault("height", None)
    merged.setdefault("width", None)
    if merged["height"] is None:
        merged["height"] = config.image_size
    if merged["width"] is None:
        merged["width"] = config.image_size
    if merged.get("num_sampling_steps") is None:
        merged["num_sampling_steps"] = config.num_sampling_steps
    return HarmonImageGenerationSettings(**merged).validate(config, arguments)


__all__ = [
    "DEFAULT_IMAGE_GENERATION",
    "HarmonImageGenerationSettings",
    "HarmonSettingError",
    "canonical_settings",
    "resolve_image_generation_settings",
    "sampling_name",
]
