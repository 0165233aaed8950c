"""Configuration of Harmon: a Qwen2 LLM between a MAR encoder/decoder, a diffusion-MLP head and a KL VAE."""

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# Defaults read only by image generation (never by text generation), stored in `generation_config.image_generation`:
# the reference scripts' defaults, declared once with the settings themselves.
from .modeling_harmon_settings import DEFAULT_IMAGE_GENERATION


# The reference's chat template (xtuner `qwen_chat` INSTRUCTION) with no system prompt.
DEFAULT_PROMPT_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_GENERATION_PROMPT = "Generate an image: {prompt}"
DEFAULT_UNCONDITIONAL_PROMPT = "Generate an image."

# The KL-16 VAE of MAR/Harmon expressed as `diffusers.AutoencoderKL` keyword arguments.
KL16_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"] * 5,
    "block_out_channels": [128, 128, 256, 256, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.2325,
}


def _qwen25_text_config(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int) -> dict:
    return {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }


# Harmon-0.5B = Qwen2.5-0.5B-Instruct + MAR-B; Harmon-1.5B = Qwen2.5-1.5B-Instruct + MAR-H.
HARMON_PRESETS: dict[str, dict[str, Any]] = {
    "harmon-0.5b": {
        "text_config": _qwen25_text_config(896, 4864, 24, 14),
        "encoder_hidden_size": 768,
        "encoder_num_layers": 12,
        "encoder_num_heads": 12,
        "decoder_hidden_size": 768,
        "decoder_num_layers": 12,
        "decoder_num_heads": 12,
        "diffusion_head_depth": 6,
        "diffusion_head_width": 1024,
        "image_token_id": 151665,
        "pad_token_id": 151643,
        "eos_token_id": 151645,
    },
    "harmon-1.5b": {
        "text_config": _qwen25_text_config(1536, 8960, 28, 12),
        "encoder_hidden_size": 1280,
        "encoder_num_layers": 20,
        "encoder_num_heads": 16,
        "decoder_hidden_size": 1280,
        "decoder_num_layers": 20,
        "decoder_num_heads": 16,
        "diffusion_head_depth": 12,
        "diffusion_head_width": 1536,
        "image_token_id": 151665,
        "pad_token_id": 151643,
        "eos_token_id": 151645,
    },
}


AUTO_MAP = {
    "AutoConfig": "configuration_harmon.HarmonConfig",
    "AutoModel": "modeling_harmon.HarmonForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_harmon.HarmonForConditionalGeneration",
    "AutoModelForMultimodalLM": "modeling_harmon.HarmonForConditionalGeneration",
}


class HarmonConfig(PretrainedConfig):
    r"""
    Configuration of [`HarmonForConditionalGeneration`].

    Args:
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Configuration of the LLM (a Qwen2 config by default).
        vae_config (`dict`, *optional*):
            Keyword arguments of `diffusers.AutoencoderKL`, including `scaling_factor`. The VAE stride, the latent
            channels and the latent scale are all read from here; defaults to the KL-16 VAE.
        encoder_hidden_size, encoder_num_layers, encoder_num_heads (`int`):
            Width, depth and attention heads of the MAR encoder.
        decoder_hidden_size, decoder_num_layers, decoder_num_heads (`int`):
            Width, depth and attention heads of the MAR decoder.
        mlp_ratio (`float`): hidden size of the MAR MLPs relative to their width.
        layer_norm_eps (`float`): epsilon of every MAR / diffusion-head LayerNorm.
        attention_dropout, hidden_dropout (`float`): MAR dropouts (active in training only).
        buffer_size (`int`): number of buffer ("fake latent") tokens prepended to the image tokens.
        image_size (`int`): native image side in pixels; the learned position embeddings cover
            `(image_size / vae_stride / patch_size)**2` tokens and are resized bilinearly for other sizes.
        patch_size (`int`): latent pixels per token side (1 in Harmon).
        mask_ratio_min (`float`): lower bound of the truncated-normal training mask ratio.
        diffusion_batch_mul (`int`): how many times each token is repeated (with new t and noise) in the diffusion loss.
        diffusion_head_depth, diffusion_head_width (`int`): residual blocks and width of the diffusion MLP.
        num_train_timesteps (`int`): diffusion steps of the training process.
        noise_schedule (`str`): `"cosine"` or `"linear"` beta schedule.
        learn_sigma (`bool`): whether the head predicts the variance interpolation (doubles its output channels).
        num_sampling_steps (`int`): diffusion steps used when sampling (respaced from `num_train_timesteps`).
        visual_grad_scale (`float`): gradient scale on the visual features in the understanding path (training only).
        image_token_id (`int`): id of the `<image>` placeholder (may equal the LLM vocab size; it is never embedded).
        prompt_template (`str`): chat template with an `{input}` field, no system prompt.
        generation_prompt (`str`): text-to-image instruction with a `{prompt}` field.
        unconditional_prompt (`str`): the classifier-free-guidance (and caption-dropout) prompt.
        trained_tasks (`list[str]`, *optional*): the tasks the weights were trained for (`"text2image"`,
            `"image2text"`, `"text"`, `"edit"`), written by the training script; None means unknown (older configs and
            converted reference checkpoints), so tools can tell an editing model from one that is not.
        edit_source_tokens (`bool`): instruction editing also adds a projection of the first context image's VAE
            tokens at every image position of the MAR decoder's input, so that what an edit leaves alone can be
            copied rather than redrawn from a description (InstructPix2Pix gives its UNet the source latents the
            same way). The projection starts at zero, so turning this on for a trained checkpoint changes nothing
            until it is trained. Not part of the reference; off by default.
        understanding_adapter (`str`, *optional*): the subfolder of the checkpoint holding a PEFT adapter on the LLM
            that understanding (questions, captions, the describe step of editing) uses and drawing does not;
            `from_pretrained` loads it (modeling_harmon_adapters.py). Not part of the reference; None by default.
        reading_prompt (`str`, *optional*): a question the model was trained to answer with a picture's caption
            ("describe the image."). With `edit_mode="describe"` it is asked about the context images before the
            instruction, in the same conversation (read first, then rewrite what was read); with `candidates` > 1
            it ranks drawings (how likely the model's reading of each is the prompt). None (default): neither.
    """

    model_type = "harmon"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        vae_config: dict | None = None,
        encoder_hidden_size: int = 768,
        encoder_num_layers: int = 12,
        encoder_num_heads: int = 12,
        decoder_hidden_size: int = 768,
        decoder_num_layers: int = 12,
        decoder_num_heads: int = 12,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-6,
        attention_dropout: float = 0.1,
        hidden_dropout: float = 0.1,
        buffer_size: int = 64,
        image_size: int = 256,
        patch_size: int = 1,
        mask_ratio_min: float = 0.7,
        diffusion_batch_mul: int = 4,
        diffusion_head_depth: int = 6,
        diffusion_head_width: int = 1024,
        num_train_timesteps: int = 1000,
        noise_schedule: str = "cosine",
        learn_sigma: bool = True,
        num_sampling_steps: int = 100,
        visual_grad_scale: float = 0.1,
        image_token_id: int = 151665,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        generation_prompt: str = DEFAULT_GENERATION_PROMPT,
        unconditional_prompt: str = DEFAULT_UNCONDITIONAL_PROMPT,
        tie_word_embeddings: bool | None = None,
        trained_tasks: list[str] | None = None,
        edit_source_tokens: bool = False,
        understanding_adapter: str | None = None,
        reading_prompt: str | None = None,
        **kwargs,
    ):
        if text_config is None:
            text_config = HARMON_PRESETS["harmon-0.5b"]["text_config"]
        if isinstance(text_config, dict):
            text_config = copy.deepcopy(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "qwen2"), **text_config)
        self.text_config = text_config
        self.vae_config = copy.deepcopy(dict(vae_config if vae_config is not None else KL16_VAE_CONFIG))
        self.encoder_hidden_size = encoder_hidden_size
        self.encoder_num_layers = encoder_num_layers
        self.encoder_num_heads = encoder_num_heads
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_layers = decoder_num_layers
        self.decoder_num_heads = decoder_num_heads
        self.mlp_ratio = mlp_ratio
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.buffer_size = buffer_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.mask_ratio_min = mask_ratio_min
        self.diffusion_batch_mul = diffusion_batch_mul
        self.diffusion_head_depth = diffusion_head_depth
        self.diffusion_head_width = diffusion_head_width
        self.num_train_timesteps = num_train_timesteps
        self.noise_schedule = noise_schedule
        self.learn_sigma = learn_sigma
        self.num_sampling_steps = num_sampling_steps
        self.visual_grad_scale = visual_grad_scale
        self.image_token_id = image_token_id
        self.prompt_template = prompt_template
        self.generation_prompt = generation_prompt
        self.unconditional_prompt = unconditional_prompt
        self.trained_tasks = list(trained_tasks) if isinstance(trained_tasks, (list, tuple)) else trained_tasks
        self.edit_source_tokens = edit_source_tokens
        self.understanding_adapter = understanding_adapter
        self.reading_prompt = reading_prompt
        # One class serves several Auto classes; `save_pretrained` adds AutoConfig/AutoModel to this map.
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        if tie_word_embeddings is None:
            tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._validate_harmon()

    def _validate_harmon(self) -> None:
        for name in ("encoder", "decoder"):
            width, heads = getattr(self, f"{name}_hidden_size"), getattr(self, f"{name}_num_heads")
            if width % heads != 0:
                raise ValueError(f"{name}_hidden_size ({width}) must be divisible by {name}_num_heads ({heads}).")
        if self.image_size % (self.vae_stride * self.patch_size) != 0:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of vae_stride * patch_size "
                f"({self.vae_stride} * {self.patch_size})."
            )
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}.")
        tasks = self.trained_tasks
        if tasks is not None and not (
            isinstance(tasks, list) and all(isinstance(task, str) and task for task in tasks)
        ):
            raise ValueError(f"trained_tasks must be None or a list of task names, got {tasks!r}.")
        if not isinstance(self.edit_source_tokens, bool):
            raise ValueError(f"edit_source_tokens must be True or False, got {self.edit_source_tokens!r}.")
        adapter = self.understanding_adapter
        if adapter is not None and not (
            isinstance(adapter, str)
            and adapter
            and not adapter.startswith(("/", "."))
            and "\\" not in adapter
            and ".." not in adapter.split("/")
        ):
            raise ValueError(
                f"understanding_adapter must be None or a subfolder name inside the checkpoint, got {adapter!r}."
            )
        reading = self.reading_prompt
        if reading is not None and not (isinstance(reading, str) and reading.strip()):
            raise ValueError(f"reading_prompt must be None or a non-empty question, got {reading!r}.")
        if self.noise_schedule not in ("cosine", "linear"):
            raise ValueError(f"noise_schedule must be 'cosine' or 'linear', got {self.noise_schedule!r}.")
        if not 1 <= self.num_sampling_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_sampling_steps must be in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {self.num_sampling_steps}."
            )

    # Everything below is derived, never stored, so that a config cannot contradict itself.
    @property
    def vae_stride(self) -> int:
        """Pixels per latent pixel: 2 ** (number of VAE levels - 1)."""
        return 2 ** (len(self.vae_config.get("block_out_channels", KL16_VAE_CONFIG["block_out_channels"])) - 1)

    @property
    def vae_latent_channels(self) -> int:
        return int(self.vae_config.get("latent_channels", 4))

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae_config.get("scaling_factor", 1.0))

    @property
    def token_dim(self) -> int:
        """Channels of one MAR token: latent channels times the patch area."""
        return self.vae_latent_channels * self.patch_size**2

    @property
    def image_grid(self) -> tuple[int, int]:
        """Native token grid (rows, columns) covered by the learned position embeddings."""
        side = self.image_size // (self.vae_stride * self.patch_size)
        return side, side

    @property
    def image_seq_length(self) -> int:
        rows, cols = self.image_grid
        return rows * cols

    def num_image_placeholders(self, height: int | None = None, width: int | None = None) -> int:
        """Placeholder tokens one image of `height` x `width` pixels occupies in a prompt (tokens + buffers)."""
        height = self.image_size if height is None else height
        width = self.image_size if width is None else width
        step = self.vae_stride * self.patch_size
        return (height // step) * (width // step) + self.buffer_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HarmonConfig":
        """Build the configuration of a published Harmon size (`harmon-0.5b` or `harmon-1.5b`)."""
        if name not in HARMON_PRESETS:
            raise ValueError(f"Unknown Harmon preset {name!r}; available: {sorted(HARMON_PRESETS)}.")
        kwargs = copy.deepcopy(HARMON_PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = ["HarmonConfig", "HARMON_PRESETS", "KL16_VAE_CONFIG", "DEFAULT_IMAGE_GENERATION"]
