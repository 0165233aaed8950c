"""An exponential moving average (EMA) of the trained weights, kept beside a Trainer run (`train.ema_decay`).

MAR samples from an EMA of its weights: at a constant learning rate the raw weights wander from step to step, and
a generator's samples show it. The average itself is diffusers' `EMAModel` (its decay warms up as
(1 + step) / (10 + step) and is capped at `ema_decay`; `train.ema_warmup: false` holds it at `ema_decay` instead).
What this file adds is what a `transformers.Trainer` run needs around it and neither library provides: a callback
that steps it after every optimizer step, its state saved with each checkpoint (by parameter name, in safetensors)
so that `--resume` continues the same average, and the average written into the model before the final save.
"""

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback


EMA_FILE = "ema.safetensors"


class EmaCallback(TrainerCallback):
    """Tracks an fp32 EMA of the model's trainable parameters (frozen ones never change, so they need none).

    Args:
        model: the model being trained (unwrapped: the same parameter objects the optimizer updates).
        decay: the EMA's largest decay, in (0, 1).
        warmup: warm the decay up as (1 + step) / (10 + step) (for training from scratch); False applies `decay`
            from the first step (for continuing a trained model).
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        if not isinstance(decay, float) or not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be a number in (0, 1), got {decay!r}.")
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        if not named:
            raise ValueError("ema: the model has no trainable parameters to average.")
        self.names = [name for name, _ in named]
        self.parameters = [parameter for _, parameter in named]
        # Per-parameter updates (foreach=False): the fp32 average of bf16 weights mixes dtypes, which the fused
        # foreach arithmetic does not promote.
        self.ema = EMAModel(self.parameters, decay=decay, min_decay=0.0 if warmup else decay, foreach=False)
        self.ema.to(dtype=torch.float32)

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.step(self.parameters)

    def save(self, folder: str | Path) -> None:
        """Write the average and its step count to `folder/ema.safetensors` (the caller renames the folder into
        place, so a crash leaves no partial file behind)."""
        tensors = {name: shadow.detach().contiguous() for name, shadow in zip(self.names, self.ema.shadow_params)}
        metadata = {"optimization_step": str(self.ema.optimization_step), "decay": repr(self.ema.decay)}
        save_file(tensors, str(Path(folder) / EMA_FILE), metadata=metadata)

    def load(self, folder: str | Path) -> None:
        """Continue the average saved in a checkpoint `folder` (same trainable parameters required)."""
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"train.ema_decay is set but the checkpoint {str(folder)!r} has no {EMA_FILE} (it was written by a "
                f"run without EMA); resume it without train.ema_decay, or start a new run."
            )
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            stored = set(handle.keys())
            missing, extra = sorted(set(self.names) - stored), sorted(stored - set(self.names))
            if missing or extra:
                raise ValueError(
                    f"{path}: its parameters differ from the trainable ones (missing {missing[:3]}, unexpected "
                    f"{extra[:3]}); the checkpoint was written with other trainable groups."
                )
            shadows = [handle.get_tensor(name).to(torch.float32) for name in self.names]
        state = self.ema.state_dict()
        state.update(shadow_params=shadows, optimization_step=int(metadata.get("optimization_step", 0)))
        self.ema.load_state_dict(state)

    def copy_to_model(self) -> None:
        """Replace the trainable parameters by their average (at the end of training, before the final save)."""
        self.ema.copy_to(self.parameters)
