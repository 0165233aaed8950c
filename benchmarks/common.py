"""What both benchmarks share: the preset models (random, seeded weights), per-stage meters and run metadata.

The presets are random models on purpose: speed depends on shapes, not on weight values, and no checkpoint is
needed, so every size can be measured offline. Each build of a preset has identical weights.
"""

import copy
import platform
import resource
import sys
import time
from collections.abc import Callable

import torch

from modeling_harmon import HarmonConfig, HarmonForConditionalGeneration
from modeling_harmon.configuration_harmon import HARMON_PRESETS
from modeling_harmon.demo import build_byte_tokenizer, tiny_config
from modeling_harmon.modeling_harmon_kernels import stage_meter  # noqa: F401  (one implementation, the package's)


PRESETS = ("tiny", "0.5b-shaped-4l", "0.5b", "1.5b")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SEED = 0


def preset_config(name: str) -> HarmonConfig:
    """The configuration of a benchmark preset (see the module docstrings of the benchmarks)."""
    if name == "tiny":
        tokenizer, image_token_id = build_byte_tokenizer()
        return tiny_config(
            vocab_size=len(tokenizer) - 1,
            image_token_id=image_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    if name == "0.5b-shaped-4l":
        settings = copy.deepcopy(HARMON_PRESETS["harmon-0.5b"])
        settings["text_config"]["num_hidden_layers"] = 4
        return HarmonConfig(**settings)
    if name in ("0.5b", "1.5b"):
        return HarmonConfig.from_preset(f"harmon-{name}")
    raise ValueError(f"Unknown preset {name!r}; available: {', '.join(PRESETS)}.")


def token_stride(config: HarmonConfig) -> int:
    """Pixels per MAR token side: image sizes must be multiples of it."""
    return config.vae_stride * config.patch_size


def size_problem(size: int, config: HarmonConfig) -> str | None:
    """Why `size` cannot be an image side for this preset (None when it can)."""
    stride = token_stride(config)
    if size <= 0 or size % 16 or size % stride:
        return f"--size must be a positive multiple of 16 and of the preset's token stride {stride}, got {size}."
    return None


def device_problem(device: str) -> str | None:
    """Why `device` cannot run the benchmark (None when it can)."""
    if device != "cpu" and not device.startswith("cuda"):
        return f"--device must be cpu or cuda[:N], got {device!r}."
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "--device cuda was given but CUDA is not available."
    return None


def wake_zero_initialised(model: torch.nn.Module, seed: int = SEED) -> torch.nn.Module:
    """Give every all-zero parameter (adaLN gates, the head's output layer) small seeded random values.

    Freshly initialised, the diffusion head ignores its condition (its output layer is zero) and its adaLN gates
    switch the residual branches off; a benchmark of such a model would time a degenerate network.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() and not bool(parameter.any()):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def build_model(name: str, dtype: str, device: str, seed: int = SEED) -> HarmonForConditionalGeneration:
    """A preset Harmon with seeded random weights (zero-initialised parts woken), in eval mode on `device`."""
    config = preset_config(name)
    torch.manual_seed(seed)
    model = HarmonForConditionalGeneration(config)
    wake_zero_initialised(model, seed)
    return model.to(device=device, dtype=DTYPES[dtype]).eval()


def meta_model(config: HarmonConfig) -> HarmonForConditionalGeneration:
    """The model with shapes but no storage: parameter counts and layer output shapes at no cost."""
    with torch.device("meta"):
        return HarmonForConditionalGeneration(config)


def parameter_count(*modules: torch.nn.Module) -> int:
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def wall_clock(device: str) -> Callable[[], float]:
    """`time.perf_counter`, after waiting for queued GPU work on CUDA (so a stage is charged for its kernels)."""
    if device.startswith("cuda"):

        def clock() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return clock
    return time.perf_counter


def stages_with_other(totals: dict[str, float], total: float) -> dict[str, float]:
    """The measured stages plus `other` = total minus their sum, so the stages add up to `total` exactly."""
    stages = dict(totals)
    stages["other"] = total - sum(totals.values())
    return stages


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started its program.

    Linux keeps `getrusage(...).ru_maxrss` across `execve`, so a child started by a large parent would report
    the parent's peak (subprocess's vfork shares the parent's memory until the exec); `VmHWM` of
    /proc/self/status belongs to the new program only. `ru_maxrss` is the fallback elsewhere.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_memory(device: str) -> dict[str, int]:
    """Peak resident memory of this process (and peak CUDA allocation on CUDA), in bytes."""
    memory = {"peak_rss_bytes": peak_rss_bytes()}
    if device.startswith("cuda"):
        memory["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return memory


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, str]:
    """Versions and hardware to file next to the numbers."""
    info = {"torch_version": torch.__version__, "cpu": cpu_name()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
