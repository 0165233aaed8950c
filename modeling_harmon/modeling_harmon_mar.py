"""The MAR encoder and decoder of Harmon (masked autoencoder over VAE latent tokens).

Written here rather than taken from timm: the blocks are plain pre-norm ViT blocks, but they must go through
torch SDPA, support transformers' gradient checkpointing, and keep the reference's state-dict layout.

Attention: the MAR blocks always call torch SDPA, whatever `attn_implementation` the model was loaded with (that
setting selects the LLM's attention only). Their attention is bidirectional and unmasked, so SDPA already picks a
fused kernel (flash or memory-efficient on CUDA, its flash kernel on CPU) without any extra package, and the
numerics stay those of the reference, which calls SDPA too.

Gradient checkpointing: each `HarmonMARBlock` is a `GradientCheckpointingLayer`, so `gradient_checkpointing_enable`
checkpoints every block by itself; the encoder and decoder loops call the blocks plainly (a checkpoint call there
would recompute each block twice in the backward).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_harmon import HarmonConfig


def resize_position_embedding(position_embed: torch.Tensor, source_grid: tuple[int, int], grid: tuple[int, int]):
    """Bilinearly resize a (1, rows*cols, C) row-major grid of position embeddings to `grid` (as the reference)."""
    if tuple(grid) == tuple(source_grid):
        return position_embed
    rows, cols = source_grid
    channels = position_embed.shape[-1]
    image = position_embed.reshape(1, rows, cols, channels).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=tuple(grid), mode="bilinear", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], channels)


def _buffered_position_embedding(position_embed, buffer_size: int, source_grid, grid) -> torch.Tensor:
    """[buffer rows unchanged, image rows resized to `grid`] of a (1, buffer + rows*cols, C) embedding."""
    buffer, image = position_embed.split([buffer_size, position_embed.shape[1] - buffer_size], dim=1)
    return torch.cat([buffer, resize_position_embedding(image, source_grid, grid)], dim=1)


class HarmonMARAttention(nn.Module):
    """Bidirectional multi-head self-attention with a fused qkv projection (timm layout), run by torch SDPA.

    Always SDPA: `config._attn_implementation` (eager / sdpa / flash_attention_2) is not read here; it selects the
    attention of the LLM. See the module docstring for why."""

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float, hidden_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.proj_drop = nn.Dropout(hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, query_index: torch.LongTensor | None = None) -> torch.Tensor:
        """Self-attention of (B, L, C) states; with `query_index` (B, K) only those positions attend (to all L) and
        the output is (B, K, C)."""
        batch, length, width = hidden_states.shape
        dropout = self.attention_dropout if self.training else 0.0
        if query_index is None:
            qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            queries = hidden_states.gather(1, query_index[..., None].expand(-1, -1, width))
            query = F.linear(queries, self.qkv.weight[:width], self.qkv.bias[:width])
            query = query.reshape(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
            key_value = F.linear(hidden_states, self.qkv.weight[width:], self.qkv.bias[width:])
            key, value = key_value.reshape(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(batch, -1, width)
        return self.proj_drop(self.proj(attended))


class HarmonMARMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.drop = nn.Dropout(hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.drop(F.gelu(self.fc1(hidden_states)))
        return self.drop(self.fc2(hidden_states))


class HarmonMARBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, hidden_size: int, num_heads: int, config: HarmonConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attn = HarmonMARAttention(hidden_size, num_heads, config.attention_dropout, config.hidden_dropout)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = HarmonMARMLP(hidden_size, int(hidden_size * config.mlp_ratio), config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, query_index: torch.LongTensor | None = None) -> torch.Tensor:
        """With `query_index` (B, K), the block's output at those positions only, (B, K, C): keys and values still
        come from every position, and the rest of the block runs on K rows instead of L."""
        attended = self.attn(self.norm1(hidden_states), query_index)
        if query_index is not None:
            hidden_states = hidden_states.gather(1, query_index[..., None].expand(-1, -1, hidden_states.shape[-1]))
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.norm2(hidden_states))


def _with_buffer(mask: torch.Tensor, buffer_size: int) -> torch.Tensor:
    """Prepend `buffer_size` never-masked positions to a (B, L) boolean mask."""
    return torch.cat([mask.new_zeros(mask.shape[0], buffer_size), mask], dim=1)


class HarmonMAREncoder(nn.Module):
    """Embeds the visible latent tokens, prepends the buffer tokens and runs the encoder blocks.

    Output: (B, buffer_size + visible, C) with the buffers first and visible tokens in raster order.
    """

    def __init__(self, config: HarmonConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.buffer_size = config.buffer_size
        self.grid = config.image_grid
        self.token_embed = nn.Linear(config.token_dim, width)
        self.token_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.buffer_embed = nn.Parameter(torch.zeros(1, width))
        self.position_embed = nn.Parameter(torch.zeros(1, config.buffer_size + config.image_seq_length, width))
        self.layers = nn.ModuleList(
            [HarmonMARBlock(width, config.encoder_num_heads, config) for _ in range(config.encoder_num_layers)]
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        return _buffered_position_embedding(self.position_embed, self.buffer_size, self.grid, grid)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """
        Args:
            tokens: (B, L, token_dim) latent tokens in raster order, L = grid rows * cols.
            mask: (B, L) bool, True where a token is masked (hidden from the encoder). Every row must hide the
                same number of tokens.
            grid: (rows, cols) of the latent token grid.
        """
        batch = tokens.shape[0]
        hidden = self.token_embed(tokens.to(self.token_embed.weight.dtype))
        buffers = self.buffer_embed.expand(batch, self.buffer_size, -1).to(hidden.dtype)
        hidden = torch.cat([buffers, hidden], dim=1) + self.position_embedding(grid)
        hidden = self.token_norm(hidden)
        keep = ~_with_buffer(mask, self.buffer_size)
        hidden = hidden[keep].reshape(batch, -1, hidden.shape[-1])
        for layer in self.layers:
            hidden = layer(hidden)
        return self.norm(hidden)


class HarmonEditSourceProjection(nn.Linear):
    """Source image tokens -> MAR decoder inputs (`config.edit_source_tokens`). A class of its own so that its
    initialisation (zeros: a trained model starts unchanged) is told apart from the decoder's other linears."""

    def __init__(self, config: HarmonConfig):
        super().__init__(config.token_dim, config.decoder_hidden_size)


class HarmonMARDecoder(nn.Module):
    """Fills masked positions with the mask token, runs the decoder blocks and returns the per-token head condition.

    Output: (B, L, C_dec), the diffusion-head condition of every image token.
    """

    def __init__(self, config: HarmonConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.buffer_size = config.buffer_size
        self.grid = config.image_grid
        self.embed = nn.Linear(config.encoder_hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embed = nn.Parameter(torch.zeros(1, config.buffer_size + config.image_seq_length, width))
        self.layers = nn.ModuleList(
            [HarmonMARBlock(width, config.decoder_num_heads, config) for _ in range(config.decoder_num_layers)]
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.diffusion_position_embed = nn.Parameter(torch.zeros(1, config.image_seq_length, width))

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        return _buffered_position_embedding(self.position_embed, self.buffer_size, self.grid, grid)

    def forward(
        self,
        encoded: torch.Tensor,
        mask: torch.Tensor,
        grid: tuple[int, int],
        select: torch.BoolTensor | None = None,
        num_selected: int | None = None,
        source_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            encoded: (B, buffer_size + visible, C_enc), buffers first (the encoder's output layout).
            mask: (B, L) bool, True where a token is masked.
            grid: (rows, cols) of the latent token grid.
            select: optional (B, L) bool with the same count K in every row: return only those tokens'
                conditions, (B, K, C_dec) in raster order, equal to `forward(...)[select]` reshaped. Sampling needs
                only the K tokens it predicts, so the last block runs its queries, MLP and norm on K rows only.
            num_selected: K, when the caller knows it: skips reading the counts back from the device (a sync on
                GPUs); the caller vouches that every row of `select` has K entries.
            source_embeds: optional (B, L, C_dec), added at the image positions of the input (an edit's projected
                source tokens, `config.edit_source_tokens`; zero rows for rows without a source).
        """
        batch, length = mask.shape
        hidden = self.embed(encoded)
        keep = ~_with_buffer(mask, self.buffer_size)
        full = self.mask_token.to(hidden.dtype).repeat(batch, self.buffer_size + length, 1)
        full[keep] = hidden.reshape(-1, hidden.shape[-1])
        hidden = full + self.position_embedding(grid)
        if source_embeds is not None:
            hidden = torch.cat([hidden[:, : self.buffer_size], hidden[:, self.buffer_size :] + source_embeds], dim=1)
        diffusion_position = resize_position_embedding(self.diffusion_position_embed, self.grid, grid)
        if select is None:
            for layer in self.layers:
                hidden = layer(hidden)
            return self.norm(hidden)[:, self.buffer_size :] + diffusion_position
        if num_selected is None:
            counts = select.sum(dim=1)
            if not bool((counts == counts[0]).all()):
                raise ValueError("select must pick the same number of tokens in every row.")
            num_selected = int(counts[0])
        if not self.layers:
            return self.forward(encoded, mask, grid, source_embeds=source_embeds)[select].reshape(
                batch, num_selected, -1
            )
        # Stable sort puts the selected positions first, in raster order.
        index = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :num_selected]
        for layer in self.layers[:-1]:
            hidden = layer(hidden)
        hidden = self.layers[-1](hidden, query_index=index + self.buffer_size)
        return self.norm(hidden) + diffusion_position[0][index]


__all__ = [
    "HarmonEditSourceProjection",
    "HarmonMAREncoder",
    "HarmonMARDecoder",
    "HarmonMARBlock",
    "resize_position_embedding",
]
