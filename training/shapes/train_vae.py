"""Train the Shapes world's KL VAE: a small `diffusers.AutoencoderKL` (stride 4, 4 latent channels, 32 px).

Harmon never trains its VAE with the rest, so the demo model needs one trained first. It is the model's own class
(`AutoencoderKL`), only configured small. The latent scaling factor is set from the data after training (1 / std
of the latent means), as Stable Diffusion and MAR did for theirs, so the diffusion head sees unit-variance tokens.

    python -m training.shapes.train_vae --output runs/shapes/vae --steps 3000 [--resume]
"""

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from modeling_harmon.atomic_files import atomic_path
from modeling_harmon.output_folders import OutputFolderError, check_output_folder, replace_folder

from .world import IMAGE_SIZE, render, sample_scene


VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": IMAGE_SIZE,
    "scaling_factor": 1.0,
}


def scene_batch(rng: random.Random, size: int) -> torch.Tensor:
    """(size, 3, 32, 32) in [-1, 1]: random scenes of both splits (the VAE must reconstruct held-out pairs too)."""
    images = []
    for _ in range(size):
        split = "held_out" if rng.random() < 0.2 else "train"
        images.append(np.asarray(render(sample_scene(rng, split), rng), dtype=np.float32))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.clamp(-1, 1) - b) ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def train(
    output: Path,
    steps: int,
    batch_size: int,
    lr: float,
    kl_weight: float,
    seed: int,
    resume: bool,
    overwrite: bool = False,
) -> dict:
    check_output_folder(output, overwrite)  # before the training, not after it
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = 0
    state_path = output.parent / f"{output.name}.train_state.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=True)  # tensors and plain values only
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))
    )
    for _ in range(start):
        schedule.step()
    vae.train()
    began = time.time()
    for step in range(start, steps):
        rng = random.Random(seed * 1_000_003 + step)  # data of step s is the same whether resumed or not
        pixels = scene_batch(rng, batch_size)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = (reconstruction - pixels).abs().mean() + ((reconstruction - pixels) ** 2).mean()
        loss = loss + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - began:.0f} s)", flush=True)
        if (step + 1) % 500 == 0 and step + 1 < steps:
            with atomic_path(state_path) as temporary:
                torch.save(
                    {
                        "model": vae.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "step": step + 1,
                    },
                    temporary,
                )

    vae.eval()
    with torch.no_grad():
        pixels = scene_batch(random.Random(seed + 999), 256)
        means = vae.encode(pixels).latent_dist.mean
        scaling = 1.0 / float(means.std())
        reconstruction = vae.decode(means).sample
    vae.register_to_config(scaling_factor=scaling)
    with replace_folder(output, "training.shapes.train_vae", overwrite) as staging:
        vae.save_pretrained(staging)
    state_path.unlink(missing_ok=True)
    report = {
        "steps": steps,
        "psnr_db": round(psnr(reconstruction, pixels), 2),
        "scaling_factor": scaling,
        "seconds": round(time.time() - began, 1),
    }
    print(report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if a harmon writer made it")
    args = parser.parse_args(argv)
    try:
        train(
            args.output, args.steps, args.batch_size, args.lr, args.kl_weight, args.seed, args.resume, args.overwrite
        )
    except OutputFolderError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
