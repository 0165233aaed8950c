"""Harmon: unified image understanding and generation through one shared MAR encoder around a Qwen2 LLM.

Understanding:  pixels -> VAE posterior mean -> MAR encoder (nothing masked) -> proj_in -> LLM placeholders -> text.
Generation:     prompt -> LLM (KV cache) ; per MAR iteration: visible tokens -> MAR encoder -> proj_in -> LLM ->
                proj_out (residual) -> MAR decoder -> diffusion head samples the next tokens -> ... -> VAE decode.
"""

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_harmon import DEFAULT_IMAGE_GENERATION, HarmonConfig
from .modeling_harmon_adapters import (
    base_state_dict,
    has_understanding_adapter,
    load_understanding_adapter,
    save_understanding_adapter,
    understanding_adapter_enabled,
)
from .modeling_harmon_canvas import (
    init_pixels,
    random_redraw_tokens,
    redraw_count,
    redraw_tokens,
    scaled_iterations,
)
from .modeling_harmon_diffusion import HarmonDiffusionHead, HarmonGaussianDiffusion
from .modeling_harmon_kernels import (
    DEFAULT_KERNELS,
    STAGES,
    cache_key,
    cached_kernels,
    check_kernels,
    choose_kernels,
    kernel_cache_path,
    processor_name,
    stage_kernels,
    stage_timer,
    write_cache_entry,
)
from .modeling_harmon_mar import HarmonEditSourceProjection, HarmonMARDecoder, HarmonMAREncoder
from .modeling_harmon_onednn import onednn_linears
from .modeling_harmon_sampler import HarmonMARSampler, PromptBatch, SamplerState
from .modeling_harmon_settings import (
    HarmonImageGenerationSettings,
    HarmonSettingError,
    _is_int,
    resolve_image_generation_settings,
    sampling_name,
)
from .modeling_harmon_smallrows import small_row_dtypes, small_row_linears


logger = logging.get_logger(__name__)

# pixel_values may overshoot [-1, 1] by this much (float rounding of a rescale) before they are refused.
PIXEL_RANGE_TOLERANCE = 1e-3


@dataclass
class HarmonModelOutputWithPast(ModelOutput):
    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: object | None = None
    # transformers >= 5.24 names the KV cache `cache`; both fields hold the same object.
    cache: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class HarmonCausalLMOutputWithPast(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    # transformers >= 5.24 names the KV cache `cache`; both fields hold the same object.
    cache: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class HarmonImageGenerationOutput(ModelOutput):
    """`images`: float32 (B, 3, H, W) in [-1, 1] (not clamped); `latents`: (B, C, H/stride, W/stride), scaled VAE space;
    `descriptions`: with `edit_mode="describe"`, the text drawn for each prompt (the model's account of the edit)."""

    images: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    descriptions: list[str] | None = None


@dataclass
class HarmonSamplingSpeedups:
    """Shortcuts `generate_images` takes that leave its results unchanged (up to float rounding in matmuls).

    All on by default. `model.sampling_speedups = HarmonSamplingSpeedups.none()` does the reference's work instead,
    which is the baseline benchmarks/bench_generate.py measures each shortcut against.

    Attributes:
        share_cfg_encoder: with CFG both halves have the same tokens and mask, so the MAR encoder runs once for
            them (the reference runs it on both).
        precompute_head_modulations: the diffusion head's timestep/condition work (embeddings and adaLN
            modulations) is computed for many denoising steps at once (`HarmonDiffusionHead.modulations`).
        decoder_selected_positions: the MAR decoder's last block runs its queries and MLP only on the tokens
            being predicted this iteration.
        conditional_only_vae_decode: with CFG only the conditional half is decoded (the reference decodes both and
            drops one).
        onednn_linears: on a CPU, the linear layers of the stages `linear_kernels` gives "onednn" run as oneDNN
            products on weights packed once per call (`modeling_harmon_onednn.onednn_linears`): MKL's float32
            path is ~2.3x slower on AMD processors, and unpacked weights are re-laid-out at every one of the
            diffusion head's small products. Holds one more copy of those weights while generating. False: every
            stage runs `nn.Linear`'s own product (MKL), as the reference does.
        linear_kernels: "mkl", "onednn" or "smallrows" (a hand-written float32 / bfloat16 product for calls on few
            rows, `modeling_harmon_smallrows`, oneDNN's for the others) for each stage of
            `modeling_harmon_kernels.STAGES`; None (the default): what `model.tune_for_host()` / `harmon tune` measured on this host for this model and image size (a
            cache in the user's cache folder), else `DEFAULT_KERNELS` (MKL everywhere, the reference's product).
    """

    share_cfg_encoder: bool = True
    precompute_head_modulations: bool = True
    decoder_selected_positions: bool = True
    conditional_only_vae_decode: bool = True
    onednn_linears: bool = True
    linear_kernels: dict | None = None

    @classmethod
    def none(cls) -> "HarmonSamplingSpeedups":
        return cls(**{name: False for name in cls.__dataclass_fields__ if name != "linear_kernels"})


@dataclass
class HarmonGenerationLossOutput(ModelOutput):
    """Text-to-image diffusion loss and its parts. Per-row terms are over `diffusion_batch_mul` repeats of all tokens."""

    loss: torch.FloatTensor | None = None
    mse: torch.FloatTensor | None = None
    vb: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    condition: torch.FloatTensor | None = None
    target: torch.FloatTensor | None = None


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient times `scale` backward (the reference's understanding-path visual gradient)."""

    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _cache_of(outputs):
    cache = getattr(outputs, "past_key_values", None)
    return getattr(outputs, "cache", None) if cache is None else cache


def _with_cache(output: ModelOutput, cache) -> ModelOutput:
    """Store the KV cache under both names: transformers < 5.24 reads `past_key_values`, later ones `cache`.

    Set after construction because 5.24's `ModelOutput.__init__` renames a `past_key_values=` argument.
    """
    if cache is not None:
        output["past_key_values"] = cache
        output["cache"] = cache
    return output


def _with_onednn_linears(method):
    """Runs an image-generation method with each stage's linear kernel (`HarmonSamplingSpeedups.onednn_linears` and
    `linear_kernels`, `modeling_harmon_kernels`) applied to the inner model."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not (self.sampling_speedups.onednn_linears and self.device.type == "cpu"):
            return method(self, *args, **kwargs)
        size = self.config.image_size
        kernels = self.linear_kernels(kwargs.get("height") or size, kwargs.get("width") or size)
        with stage_kernels(self.model, kernels, _kernel_contexts()):
            return method(self, *args, **kwargs)

    return wrapper


def _kernel_contexts() -> dict:
    """What switches a module's linears to each kernel of `modeling_harmon_kernels.KERNELS` (see `stage_kernels`);
    the few-row kernel is built into the folder of the user's kernel cache."""
    folder = kernel_cache_path().parent
    return {
        "mkl": (),
        "onednn": (onednn_linears,),
        "smallrows": (onednn_linears, functools.partial(small_row_linears, folder=folder)),
    }


def _without_understanding_adapter(method):
    """Run a drawing method with the LLM as its base weights are: the understanding adapter (if any) off."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with understanding_adapter_enabled(self, False):
            return method(self, *args, **kwargs)

    return wrapper


def _as_generator_list(generator, batch_size: int) -> list | None:
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if not isinstance(generator, (list, tuple)) or not all(isinstance(item, torch.Generator) for item in generator):
        kind = type(generator).__name__
        if isinstance(generator, (list, tuple)):
            kind += " holding " + ", ".join(sorted({type(item).__name__ for item in generator}))
        raise ValueError(f"generator must be a torch.Generator or a list of them (one per image), got {kind}.")
    generators = list(generator)
    if len(generators) != batch_size:
        raise ValueError(
            f"generator is a list of {len(generators)} generators but {batch_size} images are generated; "
            "pass one generator per image or a single generator."
        )
    return generators


def _randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


class HarmonPreTrainedModel(PreTrainedModel):
    """Base of the Harmon models. `attn_implementation` selects the attention of the LLM (Qwen2: eager, sdpa or
    flash_attention_2); the MAR encoder and decoder blocks always use torch SDPA, whatever is selected."""

    config: HarmonConfig
    config_class = HarmonConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HarmonMARBlock", "HarmonDiffusionResBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    # `attn_implementation` selects the LLM's attention (Qwen2 supports eager, sdpa and flash attention). The MAR
    # blocks always run torch SDPA (unmasked, bidirectional: SDPA picks fused kernels itself); see modeling_harmon_mar.py.
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module):
        """MAR initialisation: xavier-uniform linears, N(0, 0.02) learned embeddings, zeroed adaLN/output layers."""
        super()._init_weights(module)
        if isinstance(module, HarmonEditSourceProjection):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (HarmonMAREncoder, HarmonMARDecoder)):
            for name, parameter in module.named_parameters(recurse=False):
                init.normal_(parameter, std=0.02)
            for submodule in module.modules():
                if isinstance(submodule, nn.Linear):
                    init.xavier_uniform_(submodule.weight)
                    init.zeros_(submodule.bias)
        elif isinstance(module, HarmonDiffusionHead):
            for submodule in module.modules():
                if isinstance(submodule, nn.Linear):
                    init.xavier_uniform_(submodule.weight)
                    init.zeros_(submodule.bias)
            init.normal_(module.time_embed.mlp[0].weight, std=0.02)
            init.normal_(module.time_embed.mlp[2].weight, std=0.02)
            zeroed = [block.adaLN_modulation[-1] for block in module.res_blocks]
            zeroed += [module.final_layer.adaLN_modulation[-1], module.final_layer.linear]
            for linear in zeroed:
                init.zeros_(linear.weight)
                init.zeros_(linear.bias)


class HarmonModel(HarmonPreTrainedModel):
    """The parts of Harmon without the LM head: VAE, MAR encoder/decoder, bridge projections, LLM, diffusion head."""

    def __init__(self, config: HarmonConfig):
        super().__init__(config)
        self.vae = AutoencoderKL(**config.vae_config)
        self.vae.requires_grad_(False)
        self.mar_encoder = HarmonMAREncoder(config)
        text_hidden = config.text_config.hidden_size
        self.proj_in = nn.Sequential(
            nn.Linear(config.encoder_hidden_size, text_hidden), nn.SiLU(), nn.Linear(text_hidden, text_hidden)
        )
        self.language_model = AutoModel.from_config(config.text_config)
        # transformers 5.24 renamed the LLM's `past_key_values` argument to `cache`.
        parameters = inspect.signature(self.language_model.forward).parameters
        self._cache_argument = (
            "cache" if "cache" in parameters and "past_key_values" not in parameters else "past_key_values"
        )
        self.proj_out = nn.Sequential(
            nn.Linear(text_hidden, text_hidden), nn.SiLU(), nn.Linear(text_hidden, config.encoder_hidden_size)
        )
        self.mar_decoder = HarmonMARDecoder(config)
        # An edit's source tokens into the decoder (`config.edit_source_tokens`); None keeps the reference's layout.
        self.edit_source_proj = HarmonEditSourceProjection(config) if config.edit_source_tokens else None
        self.diffusion_head = HarmonDiffusionHead(config)
        self.diffusion = HarmonGaussianDiffusion(config)
        self.post_init()

    def train(self, mode: bool = True):
        """The VAE is frozen: it stays in eval mode whatever the rest does."""
        super().train(mode)
        self.vae.eval()
        return self

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ----------------------------------------------------------------------------------------------- VAE <-> tokens
    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        stride = self.config.vae_stride * self.config.patch_size
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
            kind = pixel_values.dtype if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a floating-point tensor in [-1, 1], got {kind}.")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.vae_config.get("in_channels", 3):
            raise ValueError(
                f"pixel_values must have shape (batch, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[2] % stride or pixel_values.shape[3] % stride or min(pixel_values.shape[2:]) == 0:
            raise ValueError(
                f"pixel_values height and width must be positive multiples of {stride} (the VAE stride times the "
                f"patch size), got {tuple(pixel_values.shape[2:])}."
            )
        # The VAE was trained on [-1, 1]; NaN or far-off values give garbage features without any error. The extremes
        # (one device read) tell both: a NaN anywhere makes both NaN, an inf is one of them.
        if pixel_values.numel() == 0:
            return
        low, high = torch.stack(torch.aminmax(pixel_values.detach())).tolist()
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("pixel_values contain non-finite (NaN/inf) values; images must be finite, in [-1, 1].")
        if low < -1.0 - PIXEL_RANGE_TOLERANCE or high > 1.0 + PIXEL_RANGE_TOLERANCE:
            raise ValueError(
                f"pixel_values hold values in [{low:g}, {high:g}], but must lie in [-1, 1] (map [0, 1] images with "
                f"2 * x - 1, or use the image processor)."
            )

    def check_input_ids(self, input_ids: torch.Tensor, name: str = "input_ids") -> None:
        """Refuse ids the embedding cannot look up (torch would raise a bare IndexError, or read garbage on a GPU)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            kind = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"{name} must be an integer tensor (int64 or int32) of token ids, got {kind}.")
        # Wrapped embeddings (adapters, quantisation) may not say their size; the config then does.
        vocab_size = getattr(self.get_input_embeddings(), "num_embeddings", None) or self.config.text_config.vocab_size
        image_token_id = self.config.image_token_id
        outside = (input_ids < 0) | (input_ids >= vocab_size)
        if image_token_id is not None:
            outside &= input_ids != image_token_id
        if bool(outside.any()):
            bad = input_ids[outside]
            raise ValueError(
                f"{name} must hold token ids in [0, {vocab_size - 1}] (or the <image> id {image_token_id}), got "
                f"ids from {int(bad.min())} to {int(bad.max())}."
            )

    def _warn_if_beyond_positions(self, length: int) -> None:
        """Understanding inputs longer than the LLM's `max_position_embeddings` are warned about (once per model),
        not refused: the rotary embeddings still run there, only outside what the LLM was trained on, and a
        checkpoint with RoPE scaling may be used past that length on purpose."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None or length <= limit or getattr(self, "_warned_positions", False):
            return
        self._warned_positions = True
        logger.warning(
            f"The input is {length} tokens long (prompt, image placeholders and cache), more than the language "
            f"model's max_position_embeddings ({limit}); outputs past that length are unreliable."
        )

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled posterior means as tokens (B, rows, cols, token_dim)."""
        self.check_pixel_values(pixel_values)
        mean = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.mean
        return self.latents_to_tokens(mean * self.config.vae_scaling_factor)

    def latents_to_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, rows*p, cols*p) -> (B, rows, cols, C*p*p), channel-major inside a patch (as MAR's patchify)."""
        p = self.config.patch_size
        batch, channels, height, width = latents.shape
        tokens = latents.reshape(batch, channels, height // p, p, width // p, p)
        return tokens.permute(0, 2, 4, 1, 3, 5).reshape(batch, height // p, width // p, channels * p * p)

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, rows, cols, C*p*p) -> (B, C, rows*p, cols*p)."""
        p = self.config.patch_size
        batch, rows, cols, _ = tokens.shape
        latents = tokens.reshape(batch, rows, cols, -1, p, p).permute(0, 3, 1, 4, 2, 5)
        return latents.reshape(batch, -1, rows * p, cols * p).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, h*stride, w*stride), float32, roughly in [-1, 1]."""
        latents = latents.to(self.vae.dtype) / self.config.vae_scaling_factor
        return self.vae.decode(latents).sample.float()

    # ------------------------------------------------------------------------------------------------ the bridge
    def _to_llm_order(self, hidden: torch.Tensor) -> torch.Tensor:
        """[buffers, image tokens] -> [image tokens, buffers]: the LLM sees the buffers last."""
        buffer = self.config.buffer_size
        return torch.cat([hidden[:, buffer:], hidden[:, :buffer]], dim=1)

    def _from_llm_order(self, hidden: torch.Tensor) -> torch.Tensor:
        buffer = self.config.buffer_size
        return torch.cat([hidden[:, hidden.shape[1] - buffer :], hidden[:, : hidden.shape[1] - buffer]], dim=1)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Visual features for the LLM: (B, rows*cols + buffer_size, hidden), image tokens (raster order) then buffers."""
        tokens = self.encode_images(pixel_values)
        batch, rows, cols, dim = tokens.shape
        tokens = tokens.reshape(batch, rows * cols, dim)
        mask = torch.zeros(batch, rows * cols, dtype=torch.bool, device=tokens.device)
        encoded = self.mar_encoder(tokens, mask, (rows, cols))
        return self._to_llm_order(self.proj_in(encoded))

    def run_language_model(self, inputs_embeds, attention_mask=None, position_ids=None, cache=None, **kwargs):
        """Run the LLM (no LM head) and return its outputs; `cache` is passed under this transformers' name."""
        if cache is not None:
            kwargs[self._cache_argument] = cache
            kwargs["use_cache"] = True
        else:
            kwargs.setdefault("use_cache", False)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )

    def bridge(
        self,
        encoded: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_embeds: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """Let the LLM read the MAR encoder output after the prompt and add its answer back (residual).

        Args:
            encoded: (B, buffer + visible, C_enc) MAR encoder output, buffers first.
            attention_mask: (B, P) mask of the prompt (any padding side); positions are `cumsum(mask) - 1`.
            prompt_embeds: (B, P, H) prompt embeddings, when the prompt is not already in `cache`.
            cache: a KV cache holding exactly the P prompt positions. It is left as it was found.
        """
        visual = self._to_llm_order(self.proj_in(encoded))
        length = visual.shape[1]
        prompt_mask = attention_mask.to(device=visual.device, dtype=torch.long)
        full_mask = torch.cat([prompt_mask, prompt_mask.new_ones(visual.shape[0], length)], dim=1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        if cache is None:
            inputs, position_ids = torch.cat([prompt_embeds, visual], dim=1), positions
        else:
            inputs, position_ids = visual, positions[:, -length:]
        hidden = self.run_language_model(inputs, full_mask, position_ids, cache=cache).last_hidden_state[:, -length:]
        if cache is not None:
            cache.crop(-length)
        return encoded + self.proj_out(self._from_llm_order(hidden))

    # ---------------------------------------------------------------------------------------------- understanding
    def embed_tokens(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings; `<image>` placeholders (whose id may lie outside the vocabulary) embed as token 0."""
        return self.get_input_embeddings()(input_ids.masked_fill(input_ids == self.config.image_token_id, 0))

    def get_placeholder_mask(self, input_ids: torch.LongTensor, image_features: torch.Tensor) -> torch.BoolTensor:
        mask = input_ids == self.config.image_token_id
        num_placeholders, num_features = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
        if num_placeholders != num_features:
            raise ValueError(
                f"input_ids hold {num_placeholders} image placeholder tokens (id {self.config.image_token_id}) but "
                f"pixel_values give {num_features} image features ({image_features.shape[0]} images x "
                f"{image_features.shape[1]} tokens); each image needs rows*cols + buffer_size placeholders."
            )
        return mask

    def embed_with_images(self, input_ids: torch.LongTensor, pixel_values: torch.FloatTensor):
        """(embeddings, image features): token embeddings whose `<image>` placeholders hold the images' features (the
        understanding path: VAE, MAR encoder, `proj_in`), in order; in training their gradient is scaled by
        `visual_grad_scale`. A question's images (`forward`), an edit's context images at sampling
        (`generate_images(context_images=...)`) and in training (`text_to_image_loss(context_pixel_values=...)`) all
        go through here, so they agree."""
        features = self.get_image_features(pixel_values)
        if self.training and torch.is_grad_enabled() and self.config.visual_grad_scale != 1.0:
            features = _ScaleGradient.apply(features, self.config.visual_grad_scale)
        return self.place_image_features(input_ids, features), features

    def edit_source_embeds(
        self, input_ids: torch.LongTensor, pixel_values: torch.FloatTensor | None, grid: tuple[int, int]
    ) -> torch.Tensor | None:
        """(B, rows*cols, C_dec) decoder inputs of the rows' edit sources (`config.edit_source_tokens`): each row's
        FIRST image among `pixel_values` (the images of the rows' `<image>` placeholders, in order) as VAE tokens
        through `edit_source_proj`, zeros for rows without an image. None when the model has no source path or
        there are no images. The source must have the target's token grid: the tokens are added position by
        position."""
        if self.edit_source_proj is None or pixel_values is None:
            return None
        height, width = pixel_values.shape[-2:]
        per_image = self.config.num_image_placeholders(height, width)
        counts = (input_ids == self.config.image_token_id).sum(dim=1) // per_image
        firsts = counts.cumsum(0) - counts
        has_source = counts > 0
        projected = self.project_edit_sources(pixel_values[firsts[has_source].to(pixel_values.device)], grid)
        embeds = projected.new_zeros(input_ids.shape[0], *projected.shape[1:])
        embeds[has_source.to(embeds.device)] = projected
        return embeds

    def project_edit_sources(self, pixel_values: torch.FloatTensor, grid: tuple[int, int]) -> torch.Tensor:
        """(N, rows*cols, C_dec): source images (N, 3, H, W) in [-1, 1] as VAE tokens through `edit_source_proj`."""
        tokens = self.encode_images(pixel_values.to(self.vae.device, self.vae.dtype))
        if tuple(tokens.shape[1:3]) != tuple(grid):
            raise ValueError(
                f"edit_source_tokens adds the source's tokens position by position, so an edit's first context image "
                f"must have the target's token grid {tuple(grid)}; it has {tuple(tokens.shape[1:3])} "
                f"({pixel_values.shape[-2]} x {pixel_values.shape[-1]} pixels)."
            )
        return self.edit_source_proj(tokens.flatten(1, 2).to(self.edit_source_proj.weight.dtype))

    def place_image_features(self, input_ids: torch.LongTensor, features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the `<image>` placeholders holding `features` (images, tokens, hidden), in order."""
        embeds = self.embed_tokens(input_ids)
        placeholders = self.get_placeholder_mask(input_ids, features)
        return embeds.masked_scatter(
            placeholders.unsqueeze(-1).to(embeds.device), features.to(embeds.device, embeds.dtype)
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> HarmonModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if pixel_values is not None and input_ids is None:
            raise ValueError("pixel_values need input_ids with <image> placeholders to know where images go.")
        image_features = None
        if inputs_embeds is None:
            self.check_input_ids(input_ids)
            if pixel_values is not None:
                inputs_embeds, image_features = self.embed_with_images(input_ids, pixel_values)
            else:
                inputs_embeds = self.embed_tokens(input_ids)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        self._warn_if_beyond_positions(int(past_length) + inputs_embeds.shape[1])
        if pixel_values is None and (
            input_ids is not None
            and bool((input_ids == self.config.image_token_id).any())
            and not (past_key_values is not None and past_key_values.get_seq_length() > 0)
        ):
            raise ValueError("input_ids contain <image> placeholders but no pixel_values were given.")
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # Positions follow the real tokens, so left- and right-padded batches see the same positions.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]
        outputs = self.run_language_model(
            inputs_embeds, attention_mask, position_ids, cache=past_key_values, use_cache=use_cache, **kwargs
        )
        return _with_cache(
            HarmonModelOutputWithPast(
                last_hidden_state=outputs.last_hidden_state,
                hidden_states=getattr(outputs, "hidden_states", None),
                attentions=getattr(outputs, "attentions", None),
                image_hidden_states=image_features,
            ),
            _cache_of(outputs),
        )


class HarmonForConditionalGeneration(HarmonPreTrainedModel, GenerationMixin):
    """Harmon with its LM head: `forward`/`generate` for understanding, `generate_images` for text-to-image."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    output_modalities = ("image", "text")

    def __init__(self, config: HarmonConfig):
        super().__init__(config)
        self.model = HarmonModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.sampling_speedups = HarmonSamplingSpeedups()
        if getattr(self.generation_config, "image_generation", None) is None:
            self.generation_config.image_generation = dict(DEFAULT_IMAGE_GENERATION)
            # A generation config derived from the model config is rebuilt from it on save, which would drop the
            # image-generation defaults; this one is ours now.
            self.generation_config._from_model_config = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, then the understanding adapter the config names (if any; see
        modeling_harmon_adapters.py), from the same folder or repo and revision. `understanding_adapter=None` loads
        the model without it."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if getattr(model.config, "understanding_adapter", None):
            download = {
                key: kwargs.get(key)
                for key in ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies")
            }
            load_understanding_adapter(model, pretrained_model_name_or_path, kwargs.get("subfolder"), download)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`; a model holding its understanding adapter writes its base weights as a
        model without it has them, and the adapter into the subfolder `config.understanding_adapter` (transformers
        alone would write only the adapter)."""
        if not has_understanding_adapter(self):
            return super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("state_dict") is not None or kwargs.get("push_to_hub"):
            raise ValueError(
                "save_pretrained(state_dict=..., push_to_hub=True) is not supported for a model with its understanding "
                "adapter; save to a folder, then upload it (harmon push)."
            )
        self._hf_peft_config_loaded = False  # transformers' switch between the adapter-only and the full format
        try:
            # The base keys are already the model's own names: reverting load-time renamings would misread them.
            result = super().save_pretrained(
                save_directory, *args, state_dict=base_state_dict(self), save_original_format=False, **kwargs
            )
        finally:
            self._hf_peft_config_loaded = True
        save_understanding_adapter(self, Path(save_directory) / self.config.understanding_adapter)
        return result

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        generation_targets: bool = False,
        **kwargs,
    ) -> HarmonCausalLMOutputWithPast | HarmonGenerationLossOutput:
        r"""
        Image-conditioned language modelling. `input_ids` hold `rows*cols + buffer_size` `<image>` placeholders per
        image in `pixel_values` (B_img, 3, H, W) in [-1, 1]; `labels` use -100 for positions without loss.

        `generation_targets=True` instead returns [`text_to_image_loss`] of prompts `input_ids` / `attention_mask`
        and target images `pixel_values` (or `latents=`, plus its other keyword arguments): the training step of
        text-to-image goes through `forward` so that DDP / FSDP wrappers see it.

        Ids outside the vocabulary and pixel_values that are not finite or not in [-1, 1] raise `ValueError`. An input
        longer than the LLM's `max_position_embeddings` (cache included) only logs a warning, once per model: the
        rotary embeddings still work there, and RoPE-scaled checkpoints may go past it on purpose.
        """
        if generation_targets:
            return self.text_to_image_loss(input_ids, attention_mask, pixel_values=pixel_values, **kwargs)
        with understanding_adapter_enabled(self, True):
            if "cache" in kwargs and past_key_values is None:
                past_key_values = kwargs.pop("cache")
            num_items_in_batch = kwargs.pop("num_items_in_batch", None)
            outputs = self.model(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
            hidden = outputs.last_hidden_state
            if isinstance(logits_to_keep, int):
                hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
            else:
                hidden = hidden[:, logits_to_keep]
            logits = self.lm_head(hidden)
            loss = None
            if labels is not None:
                loss = self.loss_function(
                    logits=logits,
                    labels=labels,
                    vocab_size=self.config.text_config.vocab_size,
                    num_items_in_batch=num_items_in_batch,
                )
            return _with_cache(
                HarmonCausalLMOutputWithPast(
                    loss=loss,
                    logits=logits,
                    hidden_states=outputs.hidden_states,
                    attentions=outputs.attentions,
                    image_hidden_states=outputs.image_hidden_states,
                ),
                _cache_of(outputs),
            )

    def generate(self, *args, generation_mode: str = "text", **kwargs):
        """`generation_mode="text"` (default): `GenerationMixin.generate`; `"image"`: [`generate_images`]."""
        if generation_mode == "image":
            return self.generate_images(*args, **kwargs)
        if generation_mode != "text":
            raise ValueError(f"generation_mode must be 'text' or 'image', got {generation_mode!r}.")
        return super().generate(*args, **kwargs)

    # ------------------------------------------------------------------------------------------- text-to-image
    def _tokenizer(self, tokenizer):
        """`tokenizer`, or the stock tokenizer saved next to the weights. Never with remote code: the caller did not
        agree to run code from that folder (loading the model without `trust_remote_code` runs none of it)."""
        if tokenizer is not None:
            return tokenizer
        if getattr(self, "_harmon_tokenizer", None) is None:
            source = getattr(self.config, "_name_or_path", None)
            if not source:
                raise ValueError("tokenizer is needed for text prompts: pass tokenizer=... (or input_ids).")
            from transformers import AutoTokenizer

            try:
                self._harmon_tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            except Exception as error:
                raise ValueError(
                    f"tokenizer could not be loaded from {source!r} without remote code ({type(error).__name__}: "
                    f"{error}); load it yourself and pass tokenizer=... (or input_ids)."
                ) from error
        return self._harmon_tokenizer

    def _prompt_processor(self, tokenizer=None, processor=None):
        """The processor that formats text-to-image prompts: `processor`, or one made from this model's config around
        `tokenizer` (or the tokenizer saved with the model). Training formats its prompts with the same processor
        method (`HarmonProcessor.format_text_to_image_prompt`), so both give the same token ids."""
        if processor is not None:
            return processor
        tokenizer = self._tokenizer(tokenizer)
        cached = getattr(self, "_harmon_prompt_processor", None)
        if cached is None or cached.tokenizer is not tokenizer:
            # The processor's own import, named here too: diffusers copies only the direct relative imports of a local
            # component's module (model/modeling_harmon.py) into its module cache.
            from .image_processing_harmon import HarmonImageProcessor  # noqa: F401
            from .processing_harmon import HarmonProcessor

            try:
                cached = HarmonProcessor.from_model_config(self.config, tokenizer)
            except ValueError as error:
                raise ValueError(f"tokenizer cannot format Harmon prompts: {error}") from None
            self._harmon_prompt_processor = cached
        return cached

    def format_generation_prompt(self, prompt: str | None, tokenizer=None, processor=None) -> str:
        """Chat-formatted text-to-image prompt (`None`: the unconditional one), by the processor's chat template."""
        return self._prompt_processor(tokenizer, processor).format_text_to_image_prompt(prompt)

    def tokenize_generation_prompts(
        self, prompts: list[str | None], tokenizer=None, processor=None
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Right-padded `input_ids` and `attention_mask` (len(prompts), length) of the chat-formatted text-to-image
        prompts (`None`: unconditional), on the model's device."""
        processor = self._prompt_processor(tokenizer, processor)
        tokenizer = processor.tokenizer
        ids = [tokenizer(processor.format_text_to_image_prompt(prompt))["input_ids"] for prompt in prompts]
        length = max(len(row) for row in ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[row, : len(tokens)] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def image_generation_settings(self, sampling: str | None = None, **given) -> HarmonImageGenerationSettings:
        """The validated [`HarmonImageGenerationSettings`] for `given` (keyword arguments, `None` = not given,
        aliases such as `num_inference_steps` accepted) over this checkpoint's stored defaults
        (`generation_config.image_generation`) and its named sampling preset `sampling`
        (`generation_config.image_generation_presets`, e.g. "fast"). A bad value raises [`HarmonSettingError`] (a
        `ValueError`) whose `field` names the setting."""
        sampling = sampling_name(sampling, given.pop("preset", None))
        return resolve_image_generation_settings(
            self.config,
            stored=getattr(self.generation_config, "image_generation", None),
            presets=getattr(self.generation_config, "image_generation_presets", None),
            preset=sampling,
            **given,
        )

    # ------------------------------------------------------------------------------------ CPU kernels
    def linear_kernels(self, height: int | None = None, width: int | None = None) -> dict:
        """The matrix-product kernel of each generation stage at this image size: `sampling_speedups.linear_kernels`
        if set, else this host's tuned choice (`tune_for_host`), else `DEFAULT_KERNELS`."""
        chosen = self.sampling_speedups.linear_kernels
        if chosen is not None:
            return check_kernels(chosen)
        height, width = height or self.config.image_size, width or self.config.image_size
        return cached_kernels(self, height, width) or dict(DEFAULT_KERNELS)

    @torch.no_grad()
    def tune_for_host(
        self,
        height: int | None = None,
        width: int | None = None,
        num_iter: int | None = None,
        num_sampling_steps: int | None = None,
        guidance_scale: float | None = None,
        write: bool = True,
        sampling: str | None = None,
    ) -> dict:
        """Time one generation (after an untimed one) with every stage on MKL, with every stage on oneDNN, and (where
        it builds and runs here for this dtype) with every stage on the few-row kernel, and keep the fastest per stage
        for this host, torch, thread count, dtype, model shape and image size, in the user's cache
        (`modeling_harmon_kernels.kernel_cache_path()`; `write=False` only measures). Settings not given are the
        model's defaults (or its sampling preset `sampling`). Returns `{"key", "kernels", "seconds": {kernel:
        {stage: s}}, ...}`."""
        if self.device.type != "cpu":
            raise ValueError(f"tune_for_host measures CPU kernels; this model is on {self.device}.")
        settings = self.image_generation_settings(
            sampling,
            height=height,
            width=width,
            num_iter=num_iter,
            num_sampling_steps=num_sampling_steps,
            guidance_scale=guidance_scale,
        )
        vocab = [
            index
            for index in range(min(self.config.text_config.vocab_size, 64))
            if index != self.config.image_token_id
        ]
        prompt = torch.tensor([vocab[:20]], device=self.device)
        unconditional = torch.tensor([vocab[:12]], device=self.device)
        arguments = {
            "input_ids": prompt,
            "attention_mask": torch.ones_like(prompt),
            "negative_input_ids": unconditional,
            "negative_attention_mask": torch.ones_like(unconditional),
            **{
                name: value
                for name, value in settings.to_dict().items()
                if name not in ("strength", "image_guidance_scale")
            },
        }
        previous, seconds = self.sampling_speedups, {}
        # The few-row kernel only where it builds and runs here (a C compiler, AVX-512) and serves this dtype.
        small_rows = self.dtype in small_row_dtypes(kernel_cache_path().parent)
        try:
            for kernel in ("mkl", "onednn", "smallrows") if small_rows else ("mkl", "onednn"):
                self.sampling_speedups = dataclasses.replace(
                    previous, onednn_linears=True, linear_kernels=dict.fromkeys(STAGES, kernel)
                )
                self.generate_images(**arguments, generator=torch.Generator().manual_seed(0))  # untimed first call
                with stage_timer(self.model) as totals:
                    self.generate_images(**arguments, generator=torch.Generator().manual_seed(0))
                seconds[kernel] = {stage: round(value, 4) for stage, value in totals.items()}
        finally:
            self.sampling_speedups = previous
        key = cache_key(self, settings.height, settings.width)
        result = {
            "key": key,
            "processor": processor_name(),
            "kernels": choose_kernels(seconds),
            "seconds": seconds,
            "settings": {
                name: settings.to_dict()[name]
                for name in ("height", "width", "num_iter", "num_sampling_steps", "guidance_scale")
            },
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if write:
            result["cache"] = str(write_cache_entry(key, {k: v for k, v in result.items() if k != "key"}))
        return result

    # `sampling=` (a sampling preset's name) from it and the deprecated `preset=`, for the pipelines.
    sampling_name = staticmethod(sampling_name)

    def sampling_presets(self) -> dict[str, dict]:
        """This checkpoint's named sampling presets: name -> the settings it changes over the stored defaults."""
        return dict(getattr(self.generation_config, "image_generation_presets", None) or {})

    @staticmethod
    def image_generation_argument_names() -> tuple[str, ...]:
        """Every settings keyword `generate_images` and the pipelines take: the settings, their aliases (diffusers'
        `num_inference_steps`), `sampling` and its older name `preset`."""
        settings = HarmonImageGenerationSettings
        return (*settings.names(), *settings.aliases(), "sampling", "preset")

    def resolve_image_generation_settings(self, sampling: str | None = None, **given) -> dict:
        """[`image_generation_settings`] as a dict of `generate_images` keyword arguments."""
        return self.image_generation_settings(sampling, **given).to_dict()

    def _prompt_rows(self, prompt, input_ids, attention_mask, tokenizer, processor, what: str):
        """(ids, mask) of one prompt batch: given token ids, or text (None: unconditional) formatted and tokenised."""
        if input_ids is not None:
            self.model.check_input_ids(input_ids, f"{what}input_ids")
            if input_ids.ndim != 2 or input_ids.shape[0] == 0:
                raise ValueError(
                    f"{what}input_ids must have shape (batch, length) with batch >= 1, got {tuple(input_ids.shape)}."
                )
            input_ids = input_ids.to(self.device)
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device).long()
            return input_ids, mask
        if prompt is not None and not isinstance(prompt, (str, list, tuple)):
            raise ValueError(f"{what}prompt must be a string or a list of strings, got {type(prompt).__name__}.")
        prompts = [prompt] if isinstance(prompt, str) or prompt is None else list(prompt)
        if len(prompts) == 0:
            raise ValueError(f"{what}prompt must be a string or a non-empty list of strings, got an empty list.")
        for item in prompts:
            if item is not None and not isinstance(item, str):
                raise ValueError(f"{what}prompt must hold strings, got {type(item).__name__}.")
        return self.tokenize_generation_prompts(prompts, tokenizer, processor)

    def _prompt_batch(self, conditional: dict, negative: dict, settings, num_images_per_prompt: int) -> PromptBatch:
        """Phase 1: the LLM's prompt rows, each prompt repeated per image; with guidance, the negative (or
        unconditional) rows after them, padded to one length."""
        seq_len = (settings.height // self._token_stride()) * (settings.width // self._token_stride())
        cond_ids, cond_mask = self._prompt_rows(**conditional, what="")
        self._check_prompt_length(
            cond_mask, "input_ids" if conditional["input_ids"] is not None else "prompt", seq_len, settings
        )
        num_prompts = cond_ids.shape[0]
        guided = settings.guidance_scale != 1.0
        if guided:
            if negative["input_ids"] is None:
                negatives = negative["prompt"]
                negatives = negatives if isinstance(negatives, list) else [negatives] * num_prompts
                if len(negatives) != num_prompts:
                    raise ValueError(
                        f"negative_prompt has {len(negatives)} entries but there are {num_prompts} prompts."
                    )
                negative = {**negative, "prompt": negatives}
            neg_ids, neg_mask = self._prompt_rows(**negative, what="negative_")
            if neg_ids.shape[0] != num_prompts:
                raise ValueError(
                    f"negative_input_ids has {neg_ids.shape[0]} rows but there are {num_prompts} prompts."
                )
            name = "negative_prompt" if negative["input_ids"] is None else "negative_input_ids"
            self._check_prompt_length(neg_mask, name, seq_len, settings)
            length = max(cond_ids.shape[1], neg_ids.shape[1])
            pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
            cond_ids, cond_mask = self._pad_to(cond_ids, cond_mask, length, pad_id)
            neg_ids, neg_mask = self._pad_to(neg_ids, neg_mask, length, pad_id)
        repeat = num_images_per_prompt
        ids, mask = cond_ids.repeat_interleave(repeat, dim=0), cond_mask.repeat_interleave(repeat, dim=0)
        if guided:
            ids = torch.cat([ids, neg_ids.repeat_interleave(repeat, dim=0)])
            mask = torch.cat([mask, neg_mask.repeat_interleave(repeat, dim=0)])
        return PromptBatch(ids, mask, num_prompts * repeat, guided)

    def _context_prompt_batch(
        self, prompt, negative_prompt, input_ids, context_images, settings, per_prompt: int, tokenizer, processor
    ) -> PromptBatch:
        """Phase 1 of instruction editing: prompt rows whose `<image>` placeholders hold the context images' features
        (the understanding path), in one group (text and images), two (and images only: `guidance_scale` != 1) or
        three (and neither: `image_guidance_scale` != 1), each prompt's rows repeated per image. The negative prompt
        (or the unconditional one) is the text of the rows without the instruction."""
        if input_ids is not None or prompt is None:
            raise ValueError(
                "context_images need the instruction as prompt text (not input_ids): the processor puts the images "
                "before it."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(item, str) for item in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.100}.")
        images = self._context_image_lists(context_images, len(prompts))
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt] * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but there are {len(prompts)} prompts.")
        groups = 3 if settings.image_guidance_scale != 1.0 else 2 if settings.guidance_scale != 1.0 else 1
        rows = list(zip(prompts, images))
        if groups >= 2:
            rows += list(zip(negatives, images))
        if groups == 3:
            rows += [(negative, []) for negative in negatives]
        processor = self._prompt_processor(tokenizer, processor)
        texts = [processor.format_text_to_image_prompt(text, num_images=len(pictures)) for text, pictures in rows]
        try:
            batch = processor(
                text=texts,
                images=[picture for _, pictures in rows for picture in pictures],
                return_tensors="pt",
                padding=True,
                padding_side="right",
            )
        except ValueError as error:
            raise ValueError(f"context_images: {error}") from None
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device).long()
        seq_len = (settings.height // self._token_stride()) * (settings.width // self._token_stride())
        self._check_prompt_length(mask, "prompt with its context_images", seq_len, settings)
        # The images-only rows show the pictures of the text-and-images rows again: their features are computed once.
        count = len(prompts)
        pixels = batch["pixel_values"].to(self.device, self.dtype)
        features = self.model.get_image_features(pixels[: sum(len(pictures) for _, pictures in rows[:count])])
        if groups >= 2:
            features = torch.cat([features, features])
        embeds = self.model.place_image_features(ids, features)

        def per_image(tensor):
            groups_of_rows = [tensor[g * count : (g + 1) * count] for g in range(groups)]
            return torch.cat([rows_.repeat_interleave(per_prompt, dim=0) for rows_ in groups_of_rows])

        sources = None
        if self.model.edit_source_proj is not None:
            # Each prompt's first picture at the size being drawn: its tokens are added position by position, in
            # the rows that show the pictures (text and images; images only), not in the "neither" rows.
            size = {"height": settings.height, "width": settings.width}
            first = processor.image_processor([pictures[0] for pictures in images], size=size, return_tensors="pt")
            grid = (settings.height // self._token_stride(), settings.width // self._token_stride())
            projected = self.model.project_edit_sources(first["pixel_values"], grid)
            sources = per_image(torch.cat([projected] * min(groups, 2) + [torch.zeros_like(projected)] * (groups - 2)))
        return PromptBatch(
            per_image(ids), per_image(mask), count * per_prompt, groups > 1, groups, per_image(embeds), sources
        )

    @staticmethod
    def _context_image_lists(context_images, num_prompts: int) -> list[list]:
        """One list of PIL images per prompt, from one image, one list (every prompt's) or one list per prompt."""
        from PIL import Image

        def is_image(item):
            return isinstance(item, Image.Image)

        if is_image(context_images):
            lists = [[context_images]] * num_prompts
        elif isinstance(context_images, (list, tuple)) and context_images and all(map(is_image, context_images)):
            lists = [list(context_images)] * num_prompts
        elif (
            isinstance(context_images, (list, tuple))
            and context_images
            and all(isinstance(item, (list, tuple)) and all(map(is_image, item)) for item in context_images)
        ):
            lists = [list(item) for item in context_images]
            if len(lists) != num_prompts:
                raise ValueError(
                    f"context_images holds {len(lists)} lists but there are {num_prompts} prompts; give one list per "
                    "prompt, or one image or list for all of them."
                )
        else:
            raise ValueError(
                "context_images must be a PIL image, a list of PIL images (for every prompt) or one such list per "
                f"prompt, got {type(context_images).__name__}."
            )
        if any(not pictures for pictures in lists):
            raise ValueError("context_images: every prompt needs at least one image to edit; got an empty list.")
        return lists

    @staticmethod
    def _pad_to(ids: torch.Tensor, mask: torch.Tensor, length: int, pad_id: int):
        extra = length - ids.shape[1]
        if extra == 0:
            return ids, mask
        return (
            torch.cat([ids, ids.new_full((ids.shape[0], extra), pad_id)], dim=1),
            torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], dim=1),
        )

    def _token_stride(self) -> int:
        """Pixels per image token along each side (VAE stride x MAR patch size)."""
        return self.config.vae_stride * self.config.patch_size

    def _randomness(self, generator, batch: int, seq_len: int, orders, noise_fn):
        """Phase 2: the generation orders (B, L) and the diffusion head's noise source, both from `generator` (one,
        or one per image) unless given."""
        generators = _as_generator_list(generator, batch)
        single = generator if isinstance(generator, torch.Generator) else None
        device = self.device
        if orders is None:
            if generators is None:
                orders = torch.stack([torch.randperm(seq_len, generator=single) for _ in range(batch)])
            else:
                orders = torch.stack([torch.randperm(seq_len, generator=g, device=g.device).cpu() for g in generators])
        orders = self._check_orders(orders, batch, seq_len).to(device)
        if noise_fn is None:

            def noise_fn(shape):
                if generators is None:
                    return _randn(shape, single, device)
                rows = shape[0] // batch  # each image's rows are contiguous: its own generator draws them
                return torch.cat([_randn((rows, *shape[1:]), g, device) for g in generators], dim=0)

        return orders, noise_fn

    @torch.no_grad()
    @_with_onednn_linears
    @_without_understanding_adapter
    def generate_images(
        self,
        prompt: str | list[str] | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_iter: int | None = None,
        guidance_scale: float | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        num_sampling_steps: int | None = None,
        x0_clamp: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: Callable | None = None,
        orders: torch.LongTensor | None = None,
        noise_fn: Callable[[tuple[int, int]], torch.Tensor] | None = None,
        tokenizer=None,
        decode: bool = True,
        return_dict: bool = True,
        processor=None,
        sampling: str | None = None,
        num_inference_steps: int | None = None,
        strength: float | None = None,
        image_guidance_scale: float | None = None,
        init_image=None,
        mask_image=None,
        context_images=None,
        preset: str | None = None,
        edit_mode: str | None = None,
        prompt_mode: str | None = None,
        candidates: int | None = None,
        ranking_prompt: str | list[str] | None = None,
    ) -> HarmonImageGenerationOutput | tuple:
        r"""
        Text-to-image generation by masked autoregression in MAR token space.

        Args:
            prompt: text(s) to draw; formatted as `Generate an image: {prompt}` by the processor's chat template (the
                one training uses). Needs `processor=` or `tokenizer=` (or the tokenizer saved with the model).
                Alternatively `input_ids` / `attention_mask` of already formatted prompts (any padding side).
            negative_prompt: replaces the unconditional prompt of classifier-free guidance with
                `Generate an image: {negative_prompt}` (one string, or one per prompt). Or `negative_input_ids`.
            height, width: image size in pixels, multiples of the VAE stride (default: `config.image_size`).
            num_iter (or diffusers' `num_inference_steps`): MAR iterations (1..number of tokens).
            guidance_scale: CFG scale (>= 1; 1 turns CFG off).
            cfg_schedule: `"constant"` or `"linear"` (ramps from 1 as tokens get revealed). temperature: scales
                the diffusion head's sampling noise. num_sampling_steps: diffusion steps per iteration.
            x0_clamp: clamp the head's x0 prediction to [-x0_clamp, x0_clamp] (None: no clamp, as the reference).
            sampling: a named sampling preset of the checkpoint (`generation_config.image_generation_presets`, e.g.
                "fast"; `preset=` is its older, deprecated name), under the settings given here.
            init_image: the canvas to start from (PIL image(s), or (3, H, W) / (B, 3, H, W) in [0, 1]; one, or
                one per prompt): its tokens are kept except those `mask_image` or `strength` selects, which are
                drawn. Its size sets `height` and `width` (sides must be multiples of the token stride).
            mask_image: which tokens of `init_image` to redraw: white = redraw (diffusers' convention); a token is
                redrawn if any pixel of its cell is at least half white (`modeling_harmon_canvas.redraw_tokens`).
            strength: without a mask, the share of `init_image`'s tokens redrawn (variations), at positions drawn
                from `generator`: 0 keeps the image (its VAE round trip), 1 redraws everything. With a mask, 1.
                The MAR iterations scale with the share of tokens drawn unless `num_iter` is given.
            context_images: images the instruction `prompt` is about (instruction editing): one PIL image or a list
                (the same for every prompt), or one list per prompt. They reach the LLM through the understanding path
                (VAE -> MAR encoder -> projection, `<image>` placeholders before the instruction, as a question's
                image), so the model draws with them in view. A further edit turn passes the previous result as the
                context image. They combine with `init_image` / `mask_image` (an edit inside a mask).
            edit_mode: how an instruction about `context_images` is followed. `"direct"`: draw with the images in
                view (above). `"describe"`: the model first writes what the edited picture shows, answering the
                instruction about the images through its understanding path ([`describe_edits`], greedy), then
                draws that text as a text-to-image prompt (with `init_image` / `mask_image` if given); the texts are
                returned as `descriptions`. Default: the checkpoint's `generation_config.image_generation`, else
                `"direct"`. Without `context_images` it has nothing to apply to (a resolved settings dict may carry
                it into any call).
            prompt_mode: how a text prompt without `context_images` is drawn. `"direct"`: as given. `"describe"`:
                the model first restates each prompt in the words its drawing was trained on, through its
                understanding path ([`describe_prompts`], greedy), then draws that. `"auto"`: only the prompts with a
                word the drawing path never learned are restated ([`restate_prompts`]). The texts drawn are returned
                as `descriptions` (None when every prompt is drawn as given). Default: the checkpoint's, else
                `"direct"`.
            candidates: drawings made of each image (best of N). The generator draws them one after another, and
                the model keeps, per image, the one its understanding path finds most likely to show the drawn text:
                the log-likelihood of that text as its answer to `config.reading_prompt` about the drawing. 1 (the
                default unless the checkpoint stores another) draws once. Needs text prompts and a checkpoint with a
                reading prompt; not with `orders` / `noise_fn` (a replay is one drawing).
            ranking_prompt: the text candidates are ranked by, one or one per prompt (default: the text drawn, i.e.
                `prompt` or the model's description of it); for callers that pass `input_ids`.
            image_guidance_scale: guidance of the context images (>= 1; 1 turns it off). With it and
                `guidance_scale`, each step runs three row groups (text and images; images only; neither) and guides
                as InstructPix2Pix: `eps_n + s_I (eps_i - eps_n) + s_T (eps_c - eps_i)`; with `image_guidance_scale`
                1, two (text and images; images only), with both 1, one.
            num_images_per_prompt: images generated for each prompt.
            generator: one `torch.Generator`, or one per image: drives the token orders and all noise.
            callback: `callback(step, num_iter, tokens, mask)` after each iteration, with tokens (B, L, D) and
                mask (B, L) (True = still masked); may return `{"tokens": new_tokens}` or `{"interrupt": True}`.
            orders: (B, L) generation orders (permutations of range(L)); tokens are revealed from each order's end.
            noise_fn: `noise_fn(shape)` returning every Gaussian draw of the head in call order (for replay).
            decode: `False` skips the VAE decode (`images` is then `None`), for callers that only need latents.
            Every `None` setting comes from `generation_config.image_generation` (see [`image_generation_settings`]).

        Returns:
            [`HarmonImageGenerationOutput`] with `images` (B, 3, H, W) float32 in about [-1, 1] and `latents`
            (B, C, H/stride, W/stride) in scaled VAE space.
        """
        pixels = None
        if init_image is not None:
            pixels = init_pixels(init_image)
            height, width = self._canvas_size(pixels, height, width)
        elif mask_image is not None:
            raise ValueError("mask_image needs an init_image (the canvas whose tokens it selects).")
        settings = self.image_generation_settings(
            sampling_name(sampling, preset),
            height=height,
            width=width,
            num_iter=num_iter,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            cfg_schedule=cfg_schedule,
            temperature=temperature,
            num_sampling_steps=num_sampling_steps,
            x0_clamp=x0_clamp,
            strength=strength,
            image_guidance_scale=image_guidance_scale,
            edit_mode=edit_mode,
            prompt_mode=prompt_mode,
            candidates=candidates,
        )
        descriptions = None
        if context_images is not None and settings.edit_mode == "describe":
            if image_guidance_scale is not None and settings.image_guidance_scale != 1.0:  # a stored scale is direct's
                raise HarmonSettingError(
                    "image_guidance_scale",
                    "guides the context images while drawing (edit_mode 'direct'); with edit_mode 'describe' the "
                    f"model draws its description of the result, so use 1 (got {settings.image_guidance_scale!r}).",
                )
            descriptions = self.describe_edits(prompt, context_images, tokenizer=tokenizer, processor=processor)
            prompt, context_images = descriptions, None
            settings = dataclasses.replace(settings, image_guidance_scale=1.0)
        elif context_images is None and settings.prompt_mode != "direct":
            if prompt is None:
                raise HarmonSettingError(
                    "prompt_mode",
                    f"{settings.prompt_mode!r} restates the prompt text, so pass prompt (not input_ids).",
                )
            descriptions = self._restatement(prompt, settings.prompt_mode, tokenizer=tokenizer, processor=processor)
            if descriptions is not None:
                prompt = descriptions
        if settings.image_guidance_scale != 1.0 and context_images is None:
            raise HarmonSettingError(
                "image_guidance_scale",
                f"applies to context_images (instruction editing); pass them, or use 1 (got "
                f"{settings.image_guidance_scale!r}).",
            )
        if pixels is None and settings.strength != 1.0:
            raise HarmonSettingError(
                "strength", "applies to an init_image (the share of its tokens redrawn); pass one."
            )
        if mask_image is not None and settings.strength != 1.0:
            raise HarmonSettingError("strength", "with a mask_image must be 1: the mask says what to redraw.")
        if not _is_int(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}.")
        if input_ids is None and prompt is None:
            raise ValueError("Pass prompt (text) or input_ids (formatted prompt tokens).")
        texts = {"tokenizer": tokenizer, "processor": processor}
        if context_images is not None:
            prompts = self._context_prompt_batch(
                prompt, negative_prompt, input_ids, context_images, settings, num_images_per_prompt, **texts
            )
        else:
            prompts = self._prompt_batch(
                {"prompt": prompt, "input_ids": input_ids, "attention_mask": attention_mask, **texts},
                {
                    "prompt": negative_prompt,
                    "input_ids": negative_input_ids,
                    "attention_mask": negative_attention_mask,
                    **texts,
                },
                settings,
                num_images_per_prompt,
            )
        ranked = None
        if settings.candidates > 1:
            ranked = self._ranking_texts(
                prompt if ranking_prompt is None else ranking_prompt,
                context_images,
                orders is not None or noise_fn is not None,
                prompts.num_images,
                num_images_per_prompt,
                explicit=candidates is not None,
            )
            if ranked is None:  # a stored count, where nothing can be ranked: drawn once
                settings = dataclasses.replace(settings, candidates=1)
        given = num_iter is not None or num_inference_steps is not None
        best, prompt_cache = None, []
        for _ in range(settings.candidates):
            latents, images = self._draw(
                prompts,
                settings,
                generator,
                orders,
                noise_fn,
                pixels,
                mask_image,
                given,
                num_images_per_prompt,
                callback,
                decode or ranked is not None,
                prompt_cache,
            )
            if ranked is None:
                break
            scores = self.reading_log_likelihoods(images, ranked, tokenizer=tokenizer, processor=processor)
            if best is None:
                best = [latents, images, scores]
            else:  # per image, the first of the best-scored drawings
                better = scores > best[2]
                for index, value in enumerate((latents, images, scores)):
                    best[index] = torch.where(better.view(-1, *[1] * (value.dim() - 1)), value, best[index])
        if best is not None:
            latents, images = best[0], best[1] if decode else None
        if not return_dict:
            return images, latents
        return HarmonImageGenerationOutput(images=images, latents=latents, descriptions=descriptions)

    def _draw(
        self,
        prompts,
        settings,
        generator,
        orders,
        noise_fn,
        pixels,
        mask_image,
        given,
        per_prompt,
        callback,
        decode,
        prompt_cache: list,
    ):
        """One drawing of every image: phases 2-4 (orders and noise, the init image's known tokens, the MAR loop,
        the decode), checked finite; returns (latents, images or None). `prompt_cache` holds the prompt pass's cache
        once made: the sampler only reads it, so every candidate drawing reuses it."""
        grid = (settings.height // self._token_stride(), settings.width // self._token_stride())
        orders, noise_fn = self._randomness(generator, prompts.num_images, grid[0] * grid[1], orders, noise_fn)
        known_tokens = known_mask = None
        if pixels is not None:
            known_tokens, known_mask = self._canvas(
                pixels, mask_image, settings, prompts.num_images, per_prompt, grid, generator
            )
            settings = self._canvas_iterations(settings, known_mask, given)
        sampler = HarmonMARSampler(self.model, settings, grid, self.sampling_speedups, noise_fn)
        if known_mask is not None and bool(known_mask.all()):  # strength 0: nothing to draw
            latents, images = sampler.decode(known_tokens, False, decode)
        else:
            if not prompt_cache:
                prompt_cache.append(sampler.encode_prompts(prompts))
            state = SamplerState.start(orders, self.config.token_dim, self.dtype, known_tokens, known_mask)
            state = sampler.run(state, prompts, prompt_cache[0], callback)
            latents, images = sampler.decode(state.tokens, prompts.guided, decode)
        self._check_finite(latents, "latents", settings)
        if images is not None:
            self._check_finite(images, "images", settings)
        return latents, images

    def _ranking_texts(
        self, texts, context_images, replayed: bool, num_images: int, per_prompt: int, explicit: bool
    ) -> list[str] | None:
        """The text each image's candidates are ranked by (`candidates` > 1). Where there is none (an instruction
        drawn with its pictures in view, input_ids alone, a replay), a HarmonSettingError saying why if the caller
        asked for candidates, else None (a stored default does not apply there); a checkpoint without a reading
        prompt cannot rank at all."""
        question = getattr(self.config, "reading_prompt", None)
        reason = None
        if context_images is not None:
            reason = "an instruction drawn with its pictures in view (edit_mode 'direct') is not a caption to rank by"
        elif texts is None:
            reason = "input_ids carry no text to rank by: pass prompt, or ranking_prompt"
        elif replayed:
            reason = "orders / noise_fn replay one drawing"
        if not question:
            reason = "this checkpoint has no config.reading_prompt (a question it was trained to caption with)"
        elif reason is not None and not explicit:
            return None
        if reason is not None:
            raise HarmonSettingError(
                "candidates", f"ranks drawings by the model's reading of them, but {reason}; use 1."
            )
        texts = self._prompt_texts(texts)
        if len(texts) == 1:
            texts = texts * (num_images // per_prompt)
        if len(texts) * per_prompt != num_images:
            raise ValueError(
                f"ranking_prompt has {len(texts)} texts; give one, or one per prompt ({num_images // per_prompt})."
            )
        return [text for text in texts for _ in range(per_prompt)]

    @torch.no_grad()
    def reading_log_likelihoods(self, images, texts, tokenizer=None, processor=None) -> torch.Tensor:
        """(B,) float32: the log-likelihood of `texts[i]` as the model's answer to `config.reading_prompt` about
        `images[i]` ((B, 3, H, W) in [-1, 1], as `generate_images` returns them, or PIL images), through its
        understanding path (the understanding adapter, if any). How `candidates` ranks drawings: the higher, the
        more the model reads the picture as the text."""
        question = getattr(self.config, "reading_prompt", None)
        if not question:
            raise ValueError(
                "reading_log_likelihoods needs config.reading_prompt (a question the model captions with)."
            )
        if isinstance(images, torch.Tensor):
            pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            images = [Image.fromarray(row.permute(1, 2, 0).cpu().numpy()) for row in pixels]
        if len(images) != len(texts):
            raise ValueError(f"images ({len(images)}) and texts ({len(texts)}) must pair up.")
        processor = self._prompt_processor(tokenizer, processor)
        asked = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        header = processor.apply_chat_template(asked, add_generation_prompt=True)
        # The answer is scored up to its end-of-turn token; what the template writes after it (a newline) is not.
        full = [
            processor.apply_chat_template(
                asked + [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
            ).removesuffix("\n")
            for text in texts
        ]
        inputs = processor(text=full, images=images, return_tensors="pt", padding=True, padding_side="left")
        prefix = processor(text=[header], images=images[:1], return_tensors="pt")["input_ids"].shape[1]
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        logits = self(**inputs).logits.float()
        # With left padding every answer ends each row; row i's answer is its last (length_i - prefix) tokens.
        lengths = inputs["attention_mask"].sum(1)
        targets = inputs["input_ids"][:, 1:]
        positions = torch.arange(targets.shape[1], device=targets.device)
        answer = positions[None, :] >= (targets.shape[1] - (lengths - prefix))[:, None]
        targets = targets.masked_fill(~answer, 0)  # image placeholders may lie outside the output vocabulary
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[..., None])[..., 0]
        return (log_probs * answer).sum(1).cpu()

    @torch.no_grad()
    def describe_edits(
        self, prompt, context_images, tokenizer=None, processor=None, max_new_tokens: int = 64
    ) -> list[str]:
        """What each edited picture should show, in the model's words: instruction `prompt[i]` asked about its
        `context_images` as a question is asked (the processor's chat template, the images before the text), answered
        greedily. A unified model edits this way by reading with its understanding path and drawing with its
        generation path (`generate_images(edit_mode="describe")`); a model trained for it (the embedded Shapes model)
        answers an instruction with the edited scene's caption. A checkpoint with `config.reading_prompt` is
        first asked that question about the pictures and then the instruction, in one conversation (read, then
        rewrite what was read). Raises a ValueError naming the prompt if an answer is empty."""
        if prompt is None:
            raise ValueError("edit_mode 'describe' needs the instruction as prompt text (not input_ids).")
        prompts = self._prompt_texts(prompt)
        images = self._context_image_lists(context_images, len(prompts))
        earlier = None
        reading = getattr(self.config, "reading_prompt", None)
        if reading:  # a checkpoint trained to read the pictures first (`config.reading_prompt`) is asked so
            readings = self._describe(
                [reading] * len(prompts),
                images,
                tokenizer,
                processor,
                max_new_tokens,
                "the model wrote no description of the context images when asked its reading_prompt "
                f"({reading!r}); this checkpoint may not be trained for it.",
            )
            earlier = [[(reading, text)] for text in readings]
        return self._describe(
            prompts,
            images,
            tokenizer,
            processor,
            max_new_tokens,
            "the model wrote no description of the edited picture; this checkpoint may not be trained for edit_mode "
            "'describe': use edit_mode 'direct'.",
            earlier,
        )

    @torch.no_grad()
    def describe_prompts(
        self, prompt, tokenizer=None, processor=None, max_new_tokens: int = 64, allow_empty: bool = False
    ) -> list[str]:
        """Each text prompt restated in the model's words: `prompt[i]` sent as a user turn without images (the
        processor's chat template), answered greedily. A model trained for it (the embedded Shapes model) answers a
        free phrasing with the canonical caption its drawing knows; `generate_images(prompt_mode="describe")` then
        draws the answer. Raises a ValueError naming the prompt if an answer is empty, unless `allow_empty`."""
        prompts = self._prompt_texts(prompt)
        return self._describe(
            prompts,
            [[] for _ in prompts],
            tokenizer,
            processor,
            max_new_tokens,
            None
            if allow_empty
            else "the model wrote nothing to draw; this checkpoint may not be trained for prompt_mode 'describe': "
            "use prompt_mode 'direct'.",
        )

    def restate_prompts(self, prompt, prompt_mode: str = "describe", tokenizer=None, processor=None) -> list[str]:
        """The texts `generate_images` draws for `prompt` under `prompt_mode`: `"describe"`: every prompt restated by
        [`describe_prompts`]; `"auto"`: only the prompts with a word the drawing path never learned (see
        [`unlearned_token_ids`]), the others as given, and a prompt as given where the model writes nothing;
        `"direct"`: the prompts as given."""
        prompts = self._prompt_texts(prompt)
        if prompt_mode == "direct":
            return prompts
        automatic = prompt_mode == "auto"
        if automatic:
            unlearned = self.unlearned_token_ids(tokenizer)
            words = self._tokenizer(tokenizer)
            asked = [
                index
                for index, text in enumerate(prompts)
                if unlearned & set(words(text, add_special_tokens=False).input_ids)
            ]
        else:
            asked = list(range(len(prompts)))
        if not asked:
            return prompts
        answers = self.describe_prompts(
            [prompts[index] for index in asked], tokenizer=tokenizer, processor=processor, allow_empty=automatic
        )
        restated = list(prompts)
        for index, answer in zip(asked, answers):
            restated[index] = answer or prompts[index]
        return restated

    def _restatement(self, prompt, prompt_mode: str, tokenizer=None, processor=None) -> list[str] | None:
        """[`restate_prompts`], or None when every prompt is drawn as given (then there is nothing to report as
        `descriptions`). The model and the pipelines both decide it here."""
        restated = self.restate_prompts(prompt, prompt_mode, tokenizer=tokenizer, processor=processor)
        return None if restated == self._prompt_texts(prompt) else restated

    def unlearned_token_ids(self, tokenizer=None) -> set[int]:
        """Ids of words the tokenizer knows but the drawing path never learned: their embedding row, as drawing reads
        it (without the understanding adapter), is the unknown token's (words added with `new_token_init: unk` that
        only an adapter learned). The unknown token itself is not one: a word no part of the model knows."""
        unknown = self._tokenizer(tokenizer).unk_token_id
        if unknown is None:
            return set()
        embeddings = self.get_input_embeddings()
        table = getattr(embeddings, "original_module", embeddings).weight  # peft's modules_to_save wrapper
        same = (table == table[unknown]).all(dim=-1).nonzero().flatten().tolist()
        return set(same) - {unknown}

    @staticmethod
    def _prompt_texts(prompt) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(item, str) for item in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.100}.")
        return prompts

    def _describe(
        self, prompts, images, tokenizer, processor, max_new_tokens: int, empty: str | None, earlier=None
    ) -> list[str]:
        """Greedy answers of the understanding path to `prompts[i]` about `images[i]` (a list, maybe empty), after
        the (question, answer) turns `earlier[i]` (None: none) of the same conversation; the images go with its first
        question. An empty answer raises a ValueError ending in `empty` (None: returned as "")."""
        if not _is_int(max_new_tokens) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
        earlier = [()] * len(prompts) if earlier is None else [tuple(turns) for turns in earlier]
        # The same conversation about the same pictures (`harmon edit -n N`, a prompt repeated) is answered once.
        first_of = {}
        for index, (text, pictures, turns) in enumerate(zip(prompts, images, earlier)):
            first_of.setdefault((text, tuple(map(id, pictures)), turns), index)
        asked = sorted(set(first_of.values()))
        processor = self._prompt_processor(tokenizer, processor)

        def conversation(index: int) -> list[dict]:
            questions = [question for question, _ in earlier[index]] + [prompts[index]]
            answers = [answer for _, answer in earlier[index]]
            messages = []
            for turn, question in enumerate(questions):
                pictures = [{"type": "image"}] * len(images[index]) if turn == 0 else []
                messages.append({"role": "user", "content": pictures + [{"type": "text", "text": question}]})
                if turn < len(answers):
                    messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[turn]}]})
            return messages

        texts = [processor.apply_chat_template(conversation(index), add_generation_prompt=True) for index in asked]
        pictures = [picture for index in asked for picture in images[index]]
        try:
            inputs = processor(
                text=texts,
                images=pictures or None,
                return_tensors="pt",
                padding=True,
                padding_side="left",
            )
        except ValueError as error:
            raise ValueError(f"context_images: {error}") from None
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        output = self.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        decoded = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answer_of = {index: text.strip() for index, text in zip(asked, decoded)}
        answers = [
            answer_of[first_of[(text, tuple(map(id, pictures)), turns)]]
            for text, pictures, turns in zip(prompts, images, earlier)
        ]
        for index, (text, answer) in enumerate(zip(prompts, answers)):
            if not answer and empty is not None:
                raise ValueError(f"prompt[{index}] ({text!r:.80}): {empty}")
        return answers

    def _canvas_size(self, pixels: torch.Tensor, height: int | None, width: int | None) -> tuple[int, int]:
        """(height, width) of an init image; given sizes must match it, and its sides must fit the token grid."""
        stride = self._token_stride()
        rows, cols = pixels.shape[-2:]
        if rows % stride or cols % stride:
            raise ValueError(
                f"init_image is {cols}x{rows} pixels; its sides must be multiples of {stride} (the token stride): "
                "resize or crop it (or pad it, for outpainting)."
            )
        for name, given, actual in (("height", height, rows), ("width", width, cols)):
            if given is not None and given != actual:
                raise ValueError(
                    f"{name} ({given}) must match init_image ({actual} pixels); resize the image instead."
                )
        return rows, cols

    def _canvas(self, pixels, mask_image, settings, batch: int, per_prompt: int, grid, generator):
        """Phase 2b: the known tokens (B, L, D) of the init image and which are known (B, L; True = keep), from the
        mask or, without one, from `strength` (positions drawn from the generators)."""
        seq_len = grid[0] * grid[1]
        known = self.model.encode_images(pixels.to(self.device, self.dtype)).reshape(pixels.shape[0], seq_len, -1)
        known = self._per_image(known, batch, per_prompt, "init_image")
        if mask_image is not None:
            redraw = redraw_tokens(mask_image, settings.height, settings.width, self._token_stride())
            redraw = self._per_image(redraw.reshape(redraw.shape[0], seq_len), batch, per_prompt, "mask_image")
            counts = redraw.sum(1)
            if not bool(counts.any()):
                raise ValueError(
                    "mask_image selects no token to redraw (it is black everywhere); white marks what to redraw."
                )
            if bool((counts != counts[0]).any()):
                raise ValueError(
                    f"mask_image selects {sorted(set(counts.tolist()))} tokens for different images; the images of one "
                    "call must redraw as many tokens each: draw them in separate calls."
                )
        else:
            count = redraw_count(settings.strength, seq_len)
            if count == seq_len:
                redraw = torch.ones(batch, seq_len, dtype=torch.bool)
            else:
                generators = _as_generator_list(generator, batch) or [generator] * batch
                redraw = random_redraw_tokens(count, *grid, generators).reshape(batch, seq_len)
        return known, ~redraw.to(self.device)

    @staticmethod
    def _per_image(value: torch.Tensor, batch: int, per_prompt: int, name: str) -> torch.Tensor:
        """One row per image drawn, from a single row (for every image) or one per prompt (for its images)."""
        if value.shape[0] == 1:
            return value.expand(batch, *value.shape[1:])
        if value.shape[0] == batch // per_prompt:
            return value.repeat_interleave(per_prompt, dim=0)
        raise ValueError(f"{name} holds {value.shape[0]} images; give one, or one per prompt ({batch // per_prompt}).")

    @staticmethod
    def _canvas_iterations(settings, known_mask: torch.BoolTensor, given: bool):
        """The MAR iterations for the tokens to draw: the full image's scaled by the share drawn, unless given (then
        at most the tokens drawn)."""
        import dataclasses

        seq_len = known_mask.shape[1]
        num_unknown = seq_len - int(known_mask[0].sum())
        if num_unknown == 0:
            return settings
        if not given:
            return dataclasses.replace(settings, num_iter=scaled_iterations(settings.num_iter, num_unknown, seq_len))
        if settings.num_iter > num_unknown:
            raise HarmonSettingError(
                "num_iter",
                f"must be an integer in [1, {num_unknown}] (the tokens to draw), got {settings.num_iter!r}.",
            )
        return settings

    def _check_prompt_length(self, mask: torch.Tensor, name: str, seq_len: int, settings) -> None:
        """The longest prompt (real tokens of `mask`), the image tokens and the buffers must fit the LLM's positions."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None:
            return
        prompt_length = int(mask.sum(1).max())
        needed = prompt_length + seq_len + self.config.buffer_size
        if needed > limit:
            raise ValueError(
                f"{name} is {prompt_length} tokens long; with the {seq_len} image tokens of "
                f"{settings.height} x {settings.width} pixels and {self.config.buffer_size} buffers that is "
                f"{needed} positions, more than the language model's max_position_embeddings ({limit}); shorten "
                f"the prompt or choose a smaller height/width."
            )

    @staticmethod
    def _check_finite(tensor: torch.Tensor, what: str, settings) -> None:
        """Non-finite samples would silently become a black image; say so and name the usual causes."""
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"generate_images produced non-finite (NaN/inf) values in the {what}. Likely causes: corrupted or "
                f"incompatible weights (check the checkpoint), or an extreme temperature ({settings.temperature!r}) "
                f"or guidance_scale ({settings.guidance_scale!r})."
            )

    @staticmethod
    def _check_orders(orders: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
        orders = torch.as_tensor(orders)
        if orders.shape != (batch, seq_len):
            raise ValueError(f"orders must have shape ({batch}, {seq_len}), got {tuple(orders.shape)}.")
        expected = torch.arange(seq_len, device=orders.device).expand(batch, -1)
        if not torch.equal(orders.long().sort(dim=1).values, expected):
            raise ValueError("orders must hold one permutation of range(number of image tokens) per image.")
        return orders.long()

    # --------------------------------------------------------------------------------- text-to-image training
    def sample_mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """One draw of the truncated normal N(1, 0.25) on [mask_ratio_min, 1] (inverse-CDF sampling)."""
        low = torch.special.ndtr(torch.tensor((self.config.mask_ratio_min - 1.0) / 0.25, dtype=torch.float64))
        high = torch.special.ndtr(torch.tensor(0.0, dtype=torch.float64))
        u = torch.rand((), generator=generator, dtype=torch.float64)
        return float(1.0 + 0.25 * torch.special.ndtri(low + u * (high - low)))

    def draw_generation_mask(
        self,
        batch: int,
        seq_len: int,
        orders: torch.LongTensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        device=None,
    ) -> torch.BoolTensor:
        """(batch, seq_len) training mask, True = masked: `ceil(seq_len * ratio)` tokens of each row, the first of its
        order. `orders` (B, L) and `mask_ratio` are drawn from `generator` when not given (orders first)."""
        if orders is None:
            orders = torch.stack([torch.randperm(seq_len, generator=generator) for _ in range(batch)])
        orders = self._check_orders(orders, batch, seq_len).to(device)
        ratio = self.sample_mask_ratio(generator) if mask_ratio is None else float(mask_ratio)
        num_masked = math.ceil(seq_len * ratio)
        ranks = torch.empty_like(orders).scatter_(1, orders, torch.arange(seq_len, device=device).expand(batch, -1))
        return ranks < num_masked

    @_without_understanding_adapter
    def generation_condition(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        latents: torch.FloatTensor,
        mask: torch.BoolTensor,
        context_pixel_values: torch.FloatTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditioning (B, L, C) the diffusion head would get, target tokens (B, L, D)) of prompts `input_ids` for
        scaled VAE `latents` (B, rows, cols, D) with `mask` (B, L) hidden: the MAR encoder reads the visible tokens,
        the LLM the prompt (with `context_pixel_values` in its `<image>` placeholders) and them, the MAR decoder
        answers for every token. Training computes it once per step; a teacher's copy gives `condition_targets`."""
        model = self.model
        batch, rows, cols, dim = latents.shape
        seq_len = rows * cols
        target = latents.reshape(batch, seq_len, dim).to(self.dtype)
        device = target.device
        mask = mask.to(device=device, dtype=torch.bool)
        if mask.shape != (batch, seq_len) or len(set(mask.sum(1).tolist())) != 1:
            raise ValueError(f"mask must be (batch, {seq_len}) with the same number of masked tokens in every row.")
        encoded = model.mar_encoder(target, mask, (rows, cols))
        input_ids = input_ids.to(device)
        if context_pixel_values is not None:
            prompt_embeds, _ = model.embed_with_images(input_ids, context_pixel_values.to(device))
        elif bool((input_ids == self.config.image_token_id).any()):
            raise ValueError(
                "input_ids hold <image> placeholders but no context_pixel_values were given (the images they stand for)."
            )
        else:
            prompt_embeds = model.embed_tokens(input_ids)
        encoded = model.bridge(encoded, attention_mask, prompt_embeds=prompt_embeds)
        source = model.edit_source_embeds(input_ids, context_pixel_values, (rows, cols))
        return model.mar_decoder(encoded, mask, (rows, cols), source_embeds=source), target

    @_without_understanding_adapter
    def text_to_image_loss(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.FloatTensor | None = None,
        latents: torch.FloatTensor | None = None,
        mask: torch.BoolTensor | None = None,
        orders: torch.LongTensor | None = None,
        mask_ratio: float | None = None,
        timesteps: torch.LongTensor | None = None,
        noise: torch.FloatTensor | None = None,
        generator: torch.Generator | None = None,
        context_pixel_values: torch.FloatTensor | None = None,
        condition_targets: torch.FloatTensor | None = None,
    ) -> HarmonGenerationLossOutput:
        """MAR diffusion loss of a text-to-image batch, averaged over masked tokens.

        Args:
            input_ids, attention_mask: formatted prompts (B, P), any padding side.
            pixel_values: images (B, 3, H, W) in [-1, 1]; or `latents`: scaled VAE tokens (B, rows, cols, D).
            mask: (B, L) bool, True = masked (to predict). Otherwise built from `orders` (B, L) and `mask_ratio`
                (`ceil(L * ratio)` masked, the first entries of each order), each drawn when not given.
            timesteps: (B*L*diffusion_batch_mul,) training timesteps; noise: (same rows, D). Drawn when not given.
            generator: drives every draw that is not supplied.
            context_pixel_values: (N, 3, S, S) context images of an edit (the task `edit`), in the order of the
                prompts' `<image>` placeholders, which they fill as at sampling ([`HarmonModel.embed_with_images`]);
                they are prompt, not target, and carry no loss terms.
            condition_targets: (B, L, C) the diffusion head's conditioning that another model (a teacher) gives these
                targets with this `mask`. The loss is then how far this model's conditioning is from it at the masked
                tokens (squared error over the targets' mean square, [`condition_matching_loss`]) instead of the
                diffusion loss, and the head does not run: a new prompt form (an edit, a reworded caption) learns to
                give the conditioning that the teacher gives the prompt it already draws well.
        """
        model = self.model
        if latents is None:
            if pixel_values is None:
                raise ValueError("Pass pixel_values or latents.")
            latents = model.encode_images(pixel_values)
        batch, rows, cols, dim = latents.shape
        seq_len = rows * cols
        if mask is None:
            mask = self.draw_generation_mask(batch, seq_len, orders, mask_ratio, generator, latents.device)
        condition, target = self.generation_condition(input_ids, attention_mask, latents, mask, context_pixel_values)
        mask = mask.to(device=target.device, dtype=torch.bool)
        device = target.device
        if condition_targets is not None:
            loss = self.condition_matching_loss(condition, condition_targets, mask)
            return HarmonGenerationLossOutput(loss=loss, mask=mask, condition=condition, target=target)

        repeats = self.config.diffusion_batch_mul
        flat_target = target.reshape(batch * seq_len, dim).repeat(repeats, 1)
        flat_condition = condition.reshape(batch * seq_len, -1).repeat(repeats, 1)
        flat_mask = mask.reshape(batch * seq_len).repeat(repeats).float()
        if timesteps is None:
            timesteps = torch.randint(0, self.config.num_train_timesteps, (flat_target.shape[0],), generator=generator)
        if noise is None:
            noise = torch.randn(flat_target.shape, generator=generator)
        terms = model.diffusion.training_losses(
            model.diffusion_head,
            flat_target.float(),
            flat_condition,
            timesteps.to(device),
            noise.to(device=device, dtype=torch.float32),
        )
        loss = (terms["loss"] * flat_mask).sum() / flat_mask.sum()
        return HarmonGenerationLossOutput(
            loss=loss, mse=terms["mse"], vb=terms["vb"], mask=mask, condition=condition, target=target
        )

    @staticmethod
    def condition_matching_loss(
        condition: torch.Tensor, targets: torch.Tensor, mask: torch.BoolTensor
    ) -> torch.Tensor:
        """Mean squared distance of `condition` (B, L, C) from `targets` over the masked tokens, divided by the
        targets' mean square there: scale-free, so one weight suits any decoder width; 0 is a perfect match."""
        if targets.shape != condition.shape:
            raise ValueError(
                f"condition_targets must have the conditioning's shape {tuple(condition.shape)}, got "
                f"{tuple(targets.shape)}."
            )
        picked, wanted = condition[mask].float(), targets.to(condition.device)[mask].float()
        return ((picked - wanted) ** 2).mean() / (wanted**2).mean().clamp_min(1e-12)


# `save_pretrained` copies these files next to the weights and writes `auto_map`, so checkpoints load as remote code.
HarmonConfig.register_for_auto_class()
HarmonForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "HarmonPreTrainedModel",
    "HarmonModel",
    "HarmonForConditionalGeneration",
    "HarmonImageGenerationOutput",
    "HarmonSamplingSpeedups",
]
