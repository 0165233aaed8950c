"""The diffusion head of Harmon (MAR's SimpleMLPAdaLN) and its Gaussian diffusion: training loss and sampler.

Why not `diffusers.DDPMScheduler`: it builds its schedule in float32 (the reference uses float64 arrays, which
matters at t=999 where 1/sqrt(alpha_bar) is large), its `step()` has no temperature, and it has no
variational-bound loss for the learned variance. The sampler below is the reference's IDDPM ancestral step
with learned-range variance, written out so that every operation is visible.
"""

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_harmon import HarmonConfig


def timestep_frequencies(timesteps: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (N,) timesteps, `[cos, sin]` order (DiT convention), float32 (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class HarmonTimestepEmbedder(nn.Module):
    def __init__(self, width: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        features = timestep_frequencies(timesteps, self.frequency_size)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class HarmonDiffusionResBlock(GradientCheckpointingLayer):
    """AdaLN residual MLP block: the condition gives (shift, scale, gate) for one LayerNorm-MLP branch.

    Checkpointable like the reference's: in training the head runs on every token `diffusion_batch_mul` times, so
    its activations are the largest of the model."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.adaLN_modulation(condition))

    def modulated(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """The block given its precomputed `adaLN_modulation` output (shift, scale, gate concatenated)."""
        shift, scale, gate = modulation.chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class HarmonDiffusionFinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int, eps: float):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=eps)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.adaLN_modulation(condition))

    def modulated(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation.chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class HarmonDiffusionHead(nn.Module):
    """Noise-prediction MLP: (x_t (N, D), t (N,) original timestep indices, c (N, C_dec)) -> (N, 2D) = [eps, v]."""

    def __init__(self, config: HarmonConfig):
        super().__init__()
        width = config.diffusion_head_width
        self.in_channels = config.token_dim
        self.out_channels = config.token_dim * (2 if config.learn_sigma else 1)
        self.time_embed = HarmonTimestepEmbedder(width)
        self.cond_embed = nn.Linear(config.decoder_hidden_size, width)
        self.input_proj = nn.Linear(config.token_dim, width)
        self.res_blocks = nn.ModuleList(
            [HarmonDiffusionResBlock(width, config.layer_norm_eps) for _ in range(config.diffusion_head_depth)]
        )
        self.final_layer = HarmonDiffusionFinalLayer(width, self.out_channels, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        dtype = self.input_proj.weight.dtype
        hidden = self.input_proj(x.to(dtype))
        condition = self.time_embed(timesteps) + self.cond_embed(condition.to(dtype))
        # No checkpoint call here: each block is a `GradientCheckpointingLayer` and checkpoints itself once
        # `gradient_checkpointing_enable` is on (with its kwargs and `every_n_layers`). Wrapping the blocks again
        # would recompute them twice in the backward. Both arguments stay positional, as reentrant checkpointing needs.
        for block in self.res_blocks:
            hidden = block(hidden, condition)
        return self.final_layer(hidden, condition)

    # Sampling calls the head ~100 times on the same few rows, with the same conditions and timesteps shared by all
    # rows. Everything that depends only on (timestep, condition) -- the embeddings and every block's adaLN
    # modulation, about 60% of the head's multiply-adds -- is computed here for many steps at once, as a few large
    # matrix products that run near the matmul ceiling, instead of one small weight-bound product per step.
    def modulations(self, timesteps: torch.Tensor, condition: torch.Tensor) -> list[torch.Tensor]:
        """adaLN modulations for every (timestep, row): `timesteps` (S,) and `condition` (R, C_dec) give one
        (S, R, 3W) tensor per residual block, then (S, R, 2W) for the final layer; feed step i's slices to
        `forward_modulated`. Equal to what `forward` computes internally (up to matmul rounding)."""
        dtype = self.input_proj.weight.dtype
        time = self.time_embed(timesteps)
        cond = self.cond_embed(condition.to(dtype))
        activated = nn.functional.silu(time[:, None, :] + cond[None, :, :])
        layers = [block.adaLN_modulation[1] for block in self.res_blocks] + [self.final_layer.adaLN_modulation[1]]
        return [layer(activated) for layer in layers]

    def forward_modulated(self, x: torch.Tensor, modulations: list[torch.Tensor]) -> torch.Tensor:
        """`forward` for (N, D) inputs given one step's modulations (each (N, ·)) from `modulations`."""
        hidden = self.input_proj(x.to(self.input_proj.weight.dtype))
        for block, modulation in zip(self.res_blocks, modulations):
            hidden = block.modulated(hidden, modulation)
        return self.final_layer.modulated(hidden, modulations[-1])


def respaced_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Original timesteps kept when respacing to `num_steps` (IDDPM `space_timesteps` with one section).

    The stride is accumulated as a float and rounded with Python's round-half-to-even, exactly as the reference.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_sampling_steps must be in [1, {num_train_timesteps}], got {num_steps}.")
    stride = 1 if num_steps <= 1 else (num_train_timesteps - 1) / (num_steps - 1)
    kept, position = [], 0.0
    for _ in range(num_steps):
        kept.append(round(position))
        position += stride
    return sorted(set(kept))


def _beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    if name == "cosine":
        alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array(
            [
                min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                for i in range(num_timesteps)
            ],
            dtype=np.float64,
        )
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


class HarmonDiffusionSchedule:
    """Float64 arrays of a (possibly respaced) Gaussian diffusion, as IDDPM computes them.

    Kept off the module on purpose: as buffers they would be cast to bf16 by `model.to(torch.bfloat16)`.
    """

    def __init__(self, noise_schedule: str, num_train_timesteps: int, num_steps: int):
        base = _beta_schedule(noise_schedule, num_train_timesteps)
        base_alphas_cumprod = np.cumprod(1.0 - base)
        self.timestep_map = respaced_timesteps(num_train_timesteps, num_steps)
        betas, last = [], 1.0
        for index in self.timestep_map:
            betas.append(1 - base_alphas_cumprod[index] / last)
            last = base_alphas_cumprod[index]
        betas = np.array(betas, dtype=np.float64)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_alphas_cumprod = np.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod - 1)
        self.posterior_log_variance_clipped = (
            np.log(np.append(posterior_variance[1], posterior_variance[1:])) if len(betas) > 1 else np.array([0.0])
        )
        self.log_betas = np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)
        self._tables: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def num_steps(self) -> int:
        return len(self.timestep_map)

    def table(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Float32 copies of every array on `device` (float64 -> float32 as the reference extracts them).

        Built once per device and reused, so the sampling loops never copy schedules host -> device.
        """
        key = str(device)
        if key not in self._tables:
            self._tables[key] = self._build_table(device)
        return self._tables[key]

    def _build_table(self, device: torch.device) -> dict[str, torch.Tensor]:
        names = (
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_log_variance_clipped",
            "log_betas",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        )
        table = {name: torch.from_numpy(getattr(self, name)).float().to(device) for name in names}
        table["timestep_map"] = torch.tensor(self.timestep_map, dtype=torch.long, device=device)
        return table


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """IDDPM's decoder likelihood with 1/255 bins; Harmon inherits it for the t=0 term of its VLB."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# Upper bound on the precomputed adaLN modulations held at once while sampling (steps are processed in chunks).
_MODULATION_CHUNK_BYTES = 256 * 1024 * 1024


class HarmonGaussianDiffusion:
    """Training loss and ancestral sampler of the head (epsilon prediction, learned-range variance)."""

    def __init__(self, config: HarmonConfig):
        self.config = config
        self.train_schedule = HarmonDiffusionSchedule(
            config.noise_schedule, config.num_train_timesteps, config.num_train_timesteps
        )
        self._sampling_schedules: dict[int, HarmonDiffusionSchedule] = {}

    def sampling_schedule(self, num_steps: int | None = None) -> HarmonDiffusionSchedule:
        num_steps = self.config.num_sampling_steps if num_steps is None else int(num_steps)
        if num_steps not in self._sampling_schedules:
            self._sampling_schedules[num_steps] = HarmonDiffusionSchedule(
                self.config.noise_schedule, self.config.num_train_timesteps, num_steps
            )
        return self._sampling_schedules[num_steps]

    @staticmethod
    def _log_variance(table, index, variance_values):
        frac = (variance_values + 1) / 2
        return frac * table["log_betas"][index] + (1 - frac) * table["posterior_log_variance_clipped"][index]

    def training_losses(
        self,
        head: HarmonDiffusionHead,
        target: torch.Tensor,
        condition: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-row losses for clean tokens `target` (N, D) at `timesteps` (N,) with `noise` (N, D).

        Returns `mse` (epsilon MSE), `vb` (variational bound of the learned variance, in bits, with the predicted
        mean detached) and `loss = mse + vb`, each (N,).
        """
        table = self.train_schedule.table(target.device)
        index = timesteps
        column = lambda name: table[name][index][:, None]  # noqa: E731
        x_t = column("sqrt_alphas_cumprod") * target + column("sqrt_one_minus_alphas_cumprod") * noise
        output = head(x_t, table["timestep_map"][index], condition).float()
        channels = target.shape[1]
        eps, variance_values = output[:, :channels], output[:, channels:]
        mse = ((noise - eps) ** 2).mean(dim=1)
        if not self.config.learn_sigma:
            return {"mse": mse, "vb": torch.zeros_like(mse), "loss": mse}
        true_mean = column("posterior_mean_coef1") * target + column("posterior_mean_coef2") * x_t
        true_log_variance = column("posterior_log_variance_clipped")
        frac = (variance_values + 1) / 2
        log_variance = frac * column("log_betas") + (1 - frac) * true_log_variance
        pred_x0 = column("sqrt_recip_alphas_cumprod") * x_t - column("sqrt_recipm1_alphas_cumprod") * eps.detach()
        model_mean = column("posterior_mean_coef1") * pred_x0 + column("posterior_mean_coef2") * x_t
        kl = _normal_kl(true_mean, true_log_variance, model_mean, log_variance).mean(dim=1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(target, model_mean, 0.5 * log_variance).mean(dim=1) / math.log(2.0)
        vb = torch.where(timesteps == 0, nll, kl)
        return {"mse": mse, "vb": vb, "loss": mse + vb}

    @staticmethod
    def predict(head, x, timesteps, condition, unconditional=None, guidance_scale=1.0, modulations=None):
        """Head output split into (eps, variance values), float32, each (N, D).

        With `unconditional`, one head call covers both conditions (same x, same t) and the noise estimate is
        guided: `eps_u + guidance_scale * (eps_c - eps_u)`; the variance stays the conditional one. With
        `modulations` (one step of `head.modulations` over the rows `[condition; unconditional]`), the head skips
        its embeddings and adaLN layers, and `timesteps` and the conditions are not read again.

        Instruction editing guides twice (InstructPix2Pix's rule): `unconditional` is then the pair (image only,
        neither) and `guidance_scale` the pair (text scale s_T, image scale s_I), and the estimate is
        `eps_n + s_I * (eps_i - eps_n) + s_T * (eps_c - eps_i)`.
        """
        rows, channels = x.shape
        extra = (
            () if unconditional is None else unconditional if isinstance(unconditional, tuple) else (unconditional,)
        )
        groups = 1 + len(extra)
        inputs = torch.cat([x] * groups) if groups > 1 else x
        if modulations is not None:
            output = head.forward_modulated(inputs, modulations)
        elif groups > 1:
            output = head(inputs, torch.cat([timesteps] * groups), torch.cat([condition, *extra]))
        else:
            output = head(inputs, timesteps, condition)
        eps, variance_values = output[:rows, :channels], output[:rows, channels:]
        if groups == 2:
            uncond_eps = output[rows:, :channels]
            eps = uncond_eps + guidance_scale * (eps - uncond_eps)
        elif groups == 3:
            text_scale, image_scale = guidance_scale
            image_eps, none_eps = output[rows : 2 * rows, :channels], output[2 * rows :, :channels]
            eps = none_eps + image_scale * (image_eps - none_eps) + text_scale * (eps - image_eps)
        return eps.float(), variance_values.float()

    @torch.no_grad()
    def sample(
        self,
        head: HarmonDiffusionHead,
        condition: torch.Tensor,
        noise_fn: Callable[[tuple[int, int]], torch.Tensor],
        unconditional: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        guidance_scale: float | tuple[float, float] = 1.0,
        temperature: float = 1.0,
        num_steps: int | None = None,
        x0_clamp: float | None = None,
        precompute_modulations: bool = True,
    ) -> torch.Tensor:
        """Sample (N, D) token latents for the conditions `condition` (N, C_dec).

        With `unconditional` (N, C_dec) the head runs on both conditions each step and the guided noise estimate
        `eps_u + guidance_scale * (eps_c - eps_u)` is used (for two guidance scales, see [`predict`]); the variance
        stays the conditional one. `noise_fn(shape)`
        supplies every random draw: the start noise, then one draw per step (the last one is multiplied by 0,
        as the reference). `precompute_modulations` computes the head's condition-only work for many steps at once
        (`HarmonDiffusionHead.modulations`); False calls the plain head every step, as the reference. Returns
        float32.
        """
        schedule = self.sampling_schedule(num_steps)
        table = schedule.table(condition.device)
        rows, channels = condition.shape[0], self.config.token_dim
        extra = (
            () if unconditional is None else unconditional if isinstance(unconditional, tuple) else (unconditional,)
        )
        conditions = torch.cat([condition, *extra]) if extra else condition
        indices = list(reversed(range(schedule.num_steps)))
        if precompute_modulations:
            width = head.input_proj.out_features
            per_step = (
                conditions.shape[0] * (3 * len(head.res_blocks) + 2) * width * head.input_proj.weight.element_size()
            )
            chunk = max(1, min(len(indices), _MODULATION_CHUNK_BYTES // max(per_step, 1)))
        x = noise_fn((rows, channels)).float()
        for position, index in enumerate(indices):
            modulations = None
            if precompute_modulations:
                if position % chunk == 0:
                    block = table["timestep_map"][indices[position : position + chunk]]
                    chunk_modulations = head.modulations(block, conditions)
                modulations = [tensor[position % chunk] for tensor in chunk_modulations]
            timesteps = table["timestep_map"][index].expand(rows)
            eps, variance_values = self.predict(
                head, x, timesteps, condition, unconditional, guidance_scale, modulations=modulations
            )
            pred_x0 = table["sqrt_recip_alphas_cumprod"][index] * x - table["sqrt_recipm1_alphas_cumprod"][index] * eps
            if x0_clamp is not None:
                pred_x0 = pred_x0.clamp(-x0_clamp, x0_clamp)
            mean = table["posterior_mean_coef1"][index] * pred_x0 + table["posterior_mean_coef2"][index] * x
            if self.config.learn_sigma:
                log_variance = self._log_variance(table, index, variance_values)
            else:
                log_variance = table["posterior_log_variance_clipped"][index].expand_as(x)
            step_noise = noise_fn((rows, channels)).float()
            nonzero = 1.0 if index != 0 else 0.0
            x = mean + nonzero * torch.exp(0.5 * log_variance) * step_noise * temperature
        return x


__all__ = ["HarmonDiffusionHead", "HarmonGaussianDiffusion", "HarmonDiffusionSchedule", "respaced_timesteps"]
