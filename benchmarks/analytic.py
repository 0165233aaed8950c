"""Analytic cost of one `generate_images` call, per stage: FLOPs and bytes of weights read, from the config and the
masking schedule alone (no timing), so a measured time can be set against the least time the hardware allows.

FLOPs count matrix products only (2·M·N·K, attention's QK^T and AV included), as `torch.utils.flop_counter`
does; norms, activations and element-wise updates are left out. Weights are counted as read once per call of the
module that uses them (an upper bound on what a cache can save; embedding lookups read a few rows and are left out).
The VAE decoder's convolutions are counted from their output shapes in one decode of the meta-device model.
"""

import math
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention

from modeling_harmon import HarmonConfig, HarmonSamplingSpeedups
from modeling_harmon.modeling_harmon_diffusion import _MODULATION_CHUNK_BYTES, respaced_timesteps
from modeling_harmon.modeling_harmon_sampler import masked_counts

from .common import meta_model, parameter_count


STAGES = ("llm", "mar_encoder", "mar_decoder", "diffusion_head", "vae")


@dataclass(frozen=True)
class GenerationShape:
    """What a `generate_images` call's cost depends on besides the config."""

    batch: int
    size: int
    num_iter: int
    head_steps: int
    guidance_scale: float
    prompt_length: int
    dtype_bytes: int

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    @property
    def sequences(self) -> int:
        """LLM/decoder rows: every image, twice with classifier-free guidance."""
        return self.batch * (2 if self.guided else 1)


@dataclass
class Cost:
    flops: float = 0.0
    weight_bytes: float = 0.0

    def add(self, flops: float, weight_bytes: float = 0.0) -> None:
        self.flops += flops
        self.weight_bytes += weight_bytes


def seq_len(config: HarmonConfig, shape: GenerationShape) -> int:
    """Image tokens L of one image."""
    side = shape.size // (config.vae_stride * config.patch_size)
    return side * side


def schedule(seq_len: int, num_iter: int) -> list[tuple[int, int]]:
    """(visible tokens fed to the encoder and LLM, tokens predicted) of each MAR iteration."""
    steps, masked_before = [], seq_len
    for masked_after in masked_counts(seq_len, num_iter):
        steps.append((seq_len - masked_before, masked_before - masked_after))
        masked_before = masked_after
    return steps


def vit_block_flops(rows: int, tokens: int, width: int, mlp_width: int, queries: int | None = None) -> int:
    """A pre-norm ViT block on `tokens` positions; with `queries`, only that many positions run the query
    projection, attention, output projection and MLP (keys and values still come from every position)."""
    queries = tokens if queries is None else queries
    projections = 2 * rows * (queries * width * width + tokens * width * 2 * width + queries * width * width)
    attention = 4 * rows * queries * tokens * width
    mlp = 4 * rows * queries * width * mlp_width
    return projections + attention + mlp


def qwen_layer_flops(rows: int, tokens: int, keys: int, text_config) -> int:
    """A Qwen2 decoder layer on `tokens` new positions attending to `keys` positions (cache included)."""
    hidden, intermediate = text_config.hidden_size, text_config.intermediate_size
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    projections = 2 * rows * tokens * hidden * (2 * heads * head_dim + 2 * kv_heads * head_dim)
    attention = 4 * rows * tokens * keys * heads * head_dim
    mlp = 6 * rows * tokens * hidden * intermediate
    return projections + attention + mlp


def llm_cost(config: HarmonConfig, shape: GenerationShape, model) -> Cost:
    """The prompt prefill, then per iteration proj_in -> LLM over [visible tokens, buffers] -> proj_out."""
    text = config.text_config
    layers = text.num_hidden_layers
    llm_params = parameter_count(model.model.language_model) - parameter_count(model.model.get_input_embeddings())
    bridge_params = llm_params + parameter_count(model.model.proj_in, model.model.proj_out)
    rows, prompt = shape.sequences, shape.prompt_length
    hidden, encoder = text.hidden_size, config.encoder_hidden_size
    cost = Cost()
    cost.add(layers * qwen_layer_flops(rows, prompt, prompt, text), llm_params * shape.dtype_bytes)
    for visible, _ in schedule(seq_len(config, shape), shape.num_iter):
        tokens = visible + config.buffer_size
        projections = 2 * rows * tokens * (encoder * hidden + hidden * hidden) * 2
        cost.add(
            layers * qwen_layer_flops(rows, tokens, prompt + tokens, text) + projections,
            bridge_params * shape.dtype_bytes,
        )
    return cost


def mar_encoder_cost(config: HarmonConfig, shape: GenerationShape, speedups: HarmonSamplingSpeedups, model) -> Cost:
    """Token embedding of all L tokens, then the blocks on [buffers, visible tokens]; once for both CFG halves
    with `share_cfg_encoder`."""
    rows = shape.batch if speedups.share_cfg_encoder else shape.sequences
    width = config.encoder_hidden_size
    mlp_width = int(width * config.mlp_ratio)
    length = seq_len(config, shape)
    weight_bytes = parameter_count(model.model.mar_encoder) * shape.dtype_bytes
    cost = Cost()
    for visible, _ in schedule(length, shape.num_iter):
        blocks = config.encoder_num_layers * vit_block_flops(rows, config.buffer_size + visible, width, mlp_width)
        cost.add(2 * rows * length * config.token_dim * width + blocks, weight_bytes)
    return cost


def mar_decoder_cost(config: HarmonConfig, shape: GenerationShape, speedups: HarmonSamplingSpeedups, model) -> Cost:
    """Embedding of the encoder output, then the blocks on [buffers, all L tokens]; with
    `decoder_selected_positions` the last block's queries and MLP run on the predicted tokens only."""
    rows, width = shape.sequences, config.decoder_hidden_size
    mlp_width = int(width * config.mlp_ratio)
    length = seq_len(config, shape)
    tokens = config.buffer_size + length
    weight_bytes = parameter_count(model.model.mar_decoder) * shape.dtype_bytes
    cost = Cost()
    for visible, predicted in schedule(length, shape.num_iter):
        flops = 2 * rows * (config.buffer_size + visible) * config.encoder_hidden_size * width
        full_blocks = config.decoder_num_layers - (1 if speedups.decoder_selected_positions else 0)
        flops += full_blocks * vit_block_flops(rows, tokens, width, mlp_width)
        if speedups.decoder_selected_positions:
            flops += vit_block_flops(rows, tokens, width, mlp_width, queries=predicted)
        cost.add(flops, weight_bytes)
    return cost


def diffusion_head_cost(config: HarmonConfig, shape: GenerationShape, speedups: HarmonSamplingSpeedups, model) -> Cost:
    """`head_steps` head evaluations per iteration on the predicted tokens (both CFG halves). With precomputed
    modulations, the timestep/condition part runs once per chunk of steps, its weights read once per chunk."""
    head = model.model.diffusion_head
    width, depth = config.diffusion_head_width, config.diffusion_head_depth
    frequency = head.time_embed.frequency_size
    steps = len(respaced_timesteps(config.num_train_timesteps, shape.head_steps))
    per_row_trunk = 2 * width * (config.token_dim + 2 * depth * width + head.out_channels)
    modulation_width = width * (3 * depth + 2)
    time_flops = 2 * width * (frequency + width)
    condition_flops = 2 * config.decoder_hidden_size * width
    adaln_modules = [block.adaLN_modulation for block in head.res_blocks] + [head.final_layer.adaLN_modulation]
    condition_bytes = parameter_count(head.time_embed, head.cond_embed, *adaln_modules) * shape.dtype_bytes
    head_bytes = parameter_count(head) * shape.dtype_bytes
    cost = Cost()
    for _, predicted in schedule(seq_len(config, shape), shape.num_iter):
        rows = predicted * shape.sequences
        if not speedups.precompute_head_modulations:
            per_row = per_row_trunk + time_flops + condition_flops + 2 * width * modulation_width
            cost.add(steps * rows * per_row, steps * head_bytes)
            continue
        cost.add(steps * rows * per_row_trunk, steps * (head_bytes - condition_bytes))
        per_step_bytes = rows * modulation_width * shape.dtype_bytes
        chunk = max(1, min(steps, _MODULATION_CHUNK_BYTES // max(per_step_bytes, 1)))
        for start in range(0, steps, chunk):
            block = min(chunk, steps - start)
            flops = block * time_flops + rows * condition_flops + 2 * block * rows * width * modulation_width
            cost.add(flops, condition_bytes)
    return cost


def vae_cost(config: HarmonConfig, shape: GenerationShape, speedups: HarmonSamplingSpeedups, model) -> Cost:
    """One decode of all images (both CFG halves unless `conditional_only_vae_decode`)."""
    images = shape.batch if not shape.guided or speedups.conditional_only_vae_decode else shape.sequences
    vae = model.model.vae
    weight_bytes = parameter_count(vae.decoder, vae.post_quant_conv) * shape.dtype_bytes
    return Cost(vae_decode_flops(vae, config, images, shape.size), weight_bytes)


def vae_decode_flops(vae, config: HarmonConfig, images: int, size: int) -> int:
    """Convolution, linear and attention FLOPs of decoding `images` latents of a `size`-pixel image, read from the
    layer output shapes of one decode of the (meta-device) `vae`."""
    flops = []

    def count(module, inputs, kwargs, output):
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            flops.append(2 * output.numel() * module.in_channels // module.groups * kernel)
        elif isinstance(module, torch.nn.Linear):
            flops.append(2 * output.numel() * module.in_features)
        else:  # Attention: QK^T and AV over all spatial positions
            hidden = inputs[0] if inputs else kwargs["hidden_states"]
            tokens = math.prod(hidden.shape[2:]) if hidden.ndim == 4 else hidden.shape[1]
            flops.append(4 * hidden.shape[0] * tokens * tokens * module.to_q.out_features)

    layers = (torch.nn.Conv2d, torch.nn.Linear, Attention)
    hooks = [
        module.register_forward_hook(count, with_kwargs=True) for module in vae.modules() if isinstance(module, layers)
    ]
    latent_side = size // config.vae_stride
    latents = torch.empty(images, config.vae_latent_channels, latent_side, latent_side, device=vae.device)
    try:
        with torch.no_grad():
            vae.decode(latents)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(flops)


def generation_costs(
    config: HarmonConfig, shape: GenerationShape, speedups: HarmonSamplingSpeedups
) -> dict[str, Cost]:
    """{stage: Cost} of one `generate_images` call with these shortcuts."""
    model = meta_model(config)
    return {
        "llm": llm_cost(config, shape, model),
        "mar_encoder": mar_encoder_cost(config, shape, speedups, model),
        "mar_decoder": mar_decoder_cost(config, shape, speedups, model),
        "diffusion_head": diffusion_head_cost(config, shape, speedups, model),
        "vae": vae_cost(config, shape, speedups, model),
    }


def floors(costs: dict[str, Cost], matmul_gflops: float, copy_gbps: float) -> dict[str, dict[str, float]]:
    """Per stage: GFLOP, GB of weights and the floor time max(FLOPs / matmul rate, weight bytes / copy bandwidth)."""
    return {
        stage: {
            "gflop": cost.flops / 1e9,
            "weight_gbytes": cost.weight_bytes / 1e9,
            "floor_s": max(cost.flops / (matmul_gflops * 1e9), cost.weight_bytes / (copy_gbps * 1e9)),
        }
        for stage, cost in costs.items()
    }
