"""Harmon's masked-autoregressive image sampler, in named phases.

`HarmonForConditionalGeneration.generate_images` runs them in this order:

1. `PromptBatch`: the tokenised prompts, conditional rows first and, with classifier-free guidance, the
   unconditional (negative) rows after them; `HarmonMARSampler.encode_prompts` runs the LLM over them once and
   keeps the cache.
2. `SamplerState.start`: the token canvas and which of its tokens are still to draw (`mask`), with the order in
   which they get revealed (`ranks`, from the generation orders). Known tokens (an image to complete) are placed in
   the canvas and never redrawn; the cosine schedule runs over the unknown ones only.
3. `HarmonMARSampler.step`, once per MAR iteration: MAR encoder over the visible tokens, the LLM bridge, MAR decoder,
   the diffusion head's sample for the tokens revealed at this iteration, written into the canvas.
4. `HarmonMARSampler.decode`: tokens -> VAE latents -> pixels.

The shortcuts of `HarmonSamplingSpeedups` (all on by default, the reference's work when off) each live in the one
method whose work they change, so the loop reads the same with or without them (docs/adr-0002-sampling-speedups.md).

Uploaded with the model code (remote code): it imports only torch.
"""

import math
from dataclasses import dataclass

import torch


def masked_counts(num_unknown: int, num_iter: int) -> list[int]:
    """Tokens still masked after each MAR iteration: floor(U cos(pi/2 (k+1)/K)) of the U tokens to draw, clipped to
    [1, masked-1]; 0 at the end (MAR's cosine schedule)."""
    counts, masked = [], num_unknown
    for step in range(num_iter):
        if step == num_iter - 1:
            masked = 0
        else:
            target = math.floor(num_unknown * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
            masked = max(1, min(masked - 1, target))
        counts.append(masked)
    return counts


@dataclass
class PromptBatch:
    """Prompt rows the LLM reads before the image: (rows, P) ids and mask; with guidance, `num_images` conditional
    rows then as many unconditional rows (one per image, in the same order). Instruction editing with both guidance
    scales has three groups of rows: text and context images, context images only, neither (`groups` = 3).
    `inputs_embeds` (rows, P, H): the rows' embeddings when context images fill their `<image>` placeholders.
    `source_embeds` (rows, L, C_dec): each row's projected edit source (`config.edit_source_tokens`) for the MAR
    decoder, zeros in the rows without the context images (the "neither" group)."""

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    num_images: int
    guided: bool
    groups: int = 0  # 0: 2 when guided, else 1
    inputs_embeds: torch.Tensor | None = None
    source_embeds: torch.Tensor | None = None

    def __post_init__(self):
        if not self.groups:
            self.groups = 2 if self.guided else 1


@dataclass
class SamplerState:
    """The canvas being drawn: `tokens` (B, L, D), `mask` (B, L; True = still to draw) and `ranks` (B, L): a masked
    token stays masked while its rank is below the number of tokens still masked, so tokens are revealed from the
    end of each generation order. Known tokens carry the highest ranks (they count as revealed from the start)."""

    tokens: torch.Tensor
    mask: torch.BoolTensor
    ranks: torch.LongTensor
    num_unknown: int  # tokens to draw in all
    num_masked: int  # tokens still to draw (`mask.sum(1)`, known without a device read)

    @classmethod
    def start(
        cls,
        orders: torch.LongTensor,
        token_dim: int,
        dtype: torch.dtype,
        known_tokens: torch.Tensor | None = None,
        known_mask: torch.BoolTensor | None = None,
    ) -> "SamplerState":
        """The state before the first iteration. `orders` (B, L): permutations of the token positions. `known_mask`
        (B, L; True = known, the same count in every row) with `known_tokens` (B, L, D): tokens already known, kept
        as they are; the others are drawn in the order they take in `orders`."""
        batch, seq_len = orders.shape
        device = orders.device
        positions = torch.arange(seq_len, device=device).expand(batch, -1)
        if known_mask is None:
            ranks = torch.empty_like(orders).scatter_(1, orders, positions)
            tokens = torch.zeros(batch, seq_len, token_dim, device=device, dtype=dtype)
            return cls(tokens, torch.ones(batch, seq_len, dtype=torch.bool, device=device), ranks, seq_len, seq_len)
        known_mask = known_mask.to(device=device, dtype=torch.bool)
        counts = known_mask.sum(1)
        if known_mask.shape != (batch, seq_len) or bool((counts != counts[0]).any()):
            raise ValueError(f"known_mask must be ({batch}, {seq_len}) with the same number of known tokens per row.")
        num_unknown = seq_len - int(counts[0])
        if num_unknown == 0:
            raise ValueError("known_mask marks every token as known: there is nothing to draw.")
        # Stable sort of the orders by "known": the unknown tokens keep their relative order and come first.
        known_in_order = torch.gather(known_mask, 1, orders)
        unknown_first = torch.gather(orders, 1, torch.argsort(known_in_order.to(torch.int8), dim=1, stable=True))
        ranks = torch.empty_like(orders).scatter_(1, unknown_first, positions)
        tokens = torch.where(known_mask[..., None], known_tokens.to(device=device, dtype=dtype), 0)
        return cls(tokens, ~known_mask, ranks, num_unknown, num_unknown)


class HarmonMARSampler:
    """One image batch's sampling phases over a `HarmonModel` (`model`), for validated `settings`
    ([`HarmonImageGenerationSettings`]), a token `grid` (rows, cols) and the model's `speedups`. `noise_fn(shape)`
    returns every Gaussian draw of the diffusion head in call order."""

    def __init__(self, model, settings, grid: tuple[int, int], speedups, noise_fn):
        self.model, self.settings, self.grid, self.speedups, self.noise_fn = model, settings, grid, speedups, noise_fn

    def encode_prompts(self, prompts: PromptBatch):
        """Run the LLM over the prompt rows once; the returned cache serves every iteration."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config.text_config)
        positions = (prompts.attention_mask.cumsum(-1) - 1).clamp(min=0)
        embeds = (
            prompts.inputs_embeds if prompts.inputs_embeds is not None else self.model.embed_tokens(prompts.input_ids)
        )
        self.model.run_language_model(embeds, prompts.attention_mask, positions, cache=cache)
        return cache

    def step(self, state: SamplerState, num_masked: int, prompts: PromptBatch, cache) -> SamplerState:
        """One MAR iteration: reveal the masked tokens whose rank reaches `num_masked` (the tokens still masked
        after it)."""
        batch = prompts.num_images
        next_mask = state.ranks < num_masked
        to_predict = state.mask & ~next_mask
        num_predicted = state.num_masked - num_masked
        conditions = self._conditions(state, to_predict, num_predicted, prompts, cache)
        sampled = self._sample(*conditions, num_masked=num_masked, num_unknown=state.num_unknown)
        # Every row predicts the same number of tokens; their positions in raster order, found without a device ->
        # host read (the order matches boolean indexing with `to_predict`).
        predicted_index = torch.argsort((~to_predict).to(torch.int8), dim=1, stable=True)[:, :num_predicted]
        tokens = state.tokens.scatter(
            1,
            predicted_index[..., None].expand(-1, -1, state.tokens.shape[-1]),
            sampled.to(state.tokens.dtype).reshape(batch, num_predicted, -1),
        )
        return SamplerState(tokens, next_mask, state.ranks, state.num_unknown, num_masked)

    def run(self, state: SamplerState, prompts: PromptBatch, cache, callback=None) -> SamplerState:
        """Every iteration of the cosine schedule over the state's unknown tokens. `callback(step, num_iter, tokens,
        mask)` after each may return `{"tokens": ...}` (replaces the canvas) or `{"interrupt": True}` (stops)."""
        num_iter = self.settings.num_iter
        for step, num_masked in enumerate(masked_counts(state.num_unknown, num_iter)):
            state = self.step(state, num_masked, prompts, cache)
            if callback is not None:
                result = callback(step, num_iter, state.tokens, state.mask) or {}
                if result.get("tokens") is not None:
                    tokens = result["tokens"].to(device=state.tokens.device, dtype=state.tokens.dtype)
                    state = SamplerState(tokens, state.mask, state.ranks, state.num_unknown, state.num_masked)
                if result.get("interrupt"):
                    break
        return state

    # ------------------------------------------------------------------------------------- inside one step
    def _conditions(self, state: SamplerState, to_predict, num_predicted: int, prompts: PromptBatch, cache):
        """(conditional, unconditional or None) diffusion-head conditions of the tokens predicted this step, each
        (B * num_predicted, width), in raster order within a row; with three row groups the second is the pair
        (context images only, neither)."""
        model, batch, groups = self.model, prompts.num_images, prompts.groups
        decoder_mask = state.mask.repeat(groups, 1) if groups > 1 else state.mask
        if groups > 1 and self.speedups.share_cfg_encoder:
            # Every guidance group shares tokens and mask, so the MAR encoder runs once for them.
            encoded = model.mar_encoder(state.tokens, state.mask, self.grid).repeat(groups, 1, 1)
        else:
            tokens = state.tokens.repeat(groups, 1, 1) if groups > 1 else state.tokens
            encoded = model.mar_encoder(tokens, decoder_mask, self.grid)
        encoded = model.bridge(encoded, prompts.attention_mask, cache=cache)
        sources = prompts.source_embeds
        if self.speedups.decoder_selected_positions:
            select = to_predict.repeat(groups, 1) if groups > 1 else to_predict
            decoded = model.mar_decoder(
                encoded, decoder_mask, self.grid, select=select, num_selected=num_predicted, source_embeds=sources
            )
            decoded = decoded.reshape(-1, batch * decoded.shape[1], decoded.shape[-1])
            parts = [decoded[group] for group in range(groups)]
        else:
            decoded = model.mar_decoder(encoded, decoder_mask, self.grid, source_embeds=sources)
            parts = [decoded[group * batch : (group + 1) * batch][to_predict] for group in range(groups)]
        if groups == 1:
            return parts[0], None
        return parts[0], parts[1] if groups == 2 else (parts[1], parts[2])

    def _sample(self, conditional, unconditional, num_masked: int, num_unknown: int) -> torch.Tensor:
        """The diffusion head's sample of the predicted tokens, guided by the text at this step's scale (the linear
        schedule ramps it from 1 as the tokens to draw get revealed)."""
        settings = self.settings
        scale = settings.guidance_scale
        if settings.cfg_schedule == "linear":
            scale = 1 + (scale - 1) * (num_unknown - max(num_masked, 1)) / num_unknown
        if isinstance(unconditional, tuple):  # text and context-image guidance; the schedule ramps the text's only
            scale = (scale, settings.image_guidance_scale)
        return self.model.diffusion.sample(
            self.model.diffusion_head,
            conditional,
            self.noise_fn,
            unconditional=unconditional,
            guidance_scale=scale,
            temperature=settings.temperature,
            num_steps=settings.num_sampling_steps,
            x0_clamp=settings.x0_clamp,
            precompute_modulations=self.speedups.precompute_head_modulations,
        )

    # ------------------------------------------------------------------------------------------------ decode
    def decode(self, tokens: torch.Tensor, guided: bool, decode: bool = True):
        """(latents (B, C, h, w) in scaled VAE space, images (B, 3, H, W) or None without `decode`)."""
        batch = tokens.shape[0]
        latents = self.model.tokens_to_latents(tokens.reshape(batch, *self.grid, -1))
        if not decode:
            return latents, None
        if guided and not self.speedups.conditional_only_vae_decode:
            return latents, self.model.decode_latents(latents.repeat(2, 1, 1, 1))[:batch]  # the reference's work
        return latents, self.model.decode_latents(latents)


__all__ = ["HarmonMARSampler", "PromptBatch", "SamplerState", "masked_counts"]
