"""Which CPU matrix-product kernel each stage of image generation uses, chosen by measurement on this host.

Why: the float32 `nn.Linear` goes through MKL's sgemm, which is slow on AMD processors (oneDNN's packed product is
about 2.3x faster there for a 1024-wide layer) but on an Intel Xeon with AMX is as fast or faster for the MAR
decoder's large products; and oneDNN's packed call costs more than MKL's for narrow layers on any host (a 256-wide,
16-row product: 44 us against 34 us on the AMD host), so the embedded demo model is fastest on MKL everywhere. No
vendor or size rule gets every stage of every model right, so `harmon tune` / `model.tune_for_host()` times the
kernels on the stages' real calls (one short generation each; the third, a hand-written product for calls on few
rows, where it builds and runs here) and keeps the fastest per stage, in a JSON cache in
the user's cache folder keyed by processor, torch version, threads, dtype, the model's layer shapes and the image
size; never in a model folder. Without a cache entry every stage runs MKL (DEFAULT_KERNELS), the reference's own
product, so an untuned run is never slower than the reference's on any host.

Uploaded with the model code (remote code): imports only the standard library and torch.
"""

import contextlib
import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


STAGES = ("llm", "mar_encoder", "mar_decoder", "diffusion_head")
# "smallrows": the hand-written few-row product (modeling_harmon_smallrows) for calls on at most its
# SMALL_ROWS rows, the packed oneDNN product for the others; only where it can be built and run here.
KERNELS = ("mkl", "onednn", "smallrows")
# Submodules (of the inner `HarmonModel`) whose linears each stage's kernel choice covers.
STAGE_MODULES = {
    "llm": ("language_model",),
    "mar_encoder": ("mar_encoder", "proj_in"),
    "mar_decoder": ("mar_decoder", "proj_out"),
    "diffusion_head": ("diffusion_head",),
}
DEFAULT_KERNELS = dict.fromkeys(STAGES, "mkl")
CACHE_ENVIRONMENT = "HARMON_KERNEL_CACHE"  # a file path that replaces the default cache location


def check_kernels(kernels: dict) -> dict:
    """`kernels` must map every stage of STAGES to one of KERNELS; returns a copy."""
    if not isinstance(kernels, dict) or set(kernels) != set(STAGES) or not set(kernels.values()) <= set(KERNELS):
        raise ValueError(f"linear kernels must map each of {STAGES} to one of {KERNELS}, got {kernels!r}.")
    return dict(kernels)


def processor_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else `platform.processor()`), for the cache key and reports."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def kernel_cache_path() -> Path:
    """`$HARMON_KERNEL_CACHE`, else `$XDG_CACHE_HOME/harmon/linear_kernels.json` (default `~/.cache`)."""
    explicit = os.environ.get(CACHE_ENVIRONMENT)
    if explicit:
        return Path(explicit)
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "harmon" / "linear_kernels.json"


def cache_key(model, height: int, width: int) -> str:
    """Processor, torch version, threads, dtype, the shapes of every stage's linear weights, and the image size."""
    inner = model.model
    shapes = []
    for stage in STAGES:
        for name in STAGE_MODULES[stage]:
            for layer in getattr(inner, name).modules():
                if isinstance(layer, torch.nn.Linear):
                    shapes.append(f"{stage}:{tuple(layer.weight.shape)}")
    layers = hashlib.sha256(";".join(shapes).encode()).hexdigest()[:16]
    parts = (processor_name(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads", str(model.dtype))
    return " | ".join((*parts, f"layers {layers}", f"{height}x{width}"))


def read_cache(path: Path | None = None) -> dict:
    """The cache's entries (key -> {"kernels", "seconds", ...}); an unreadable or foreign file reads as empty."""
    path = kernel_cache_path() if path is None else Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("entries", {}) if isinstance(data, dict) else {}


def cached_kernels(model, height: int, width: int, path: Path | None = None) -> dict | None:
    """The tuned kernels for this host, model shape and size, or None when `harmon tune` has not measured them."""
    entry = read_cache(path).get(cache_key(model, height, width))
    try:
        return check_kernels(entry["kernels"]) if isinstance(entry, dict) else None
    except (KeyError, ValueError):
        return None


def write_cache_entry(key: str, entry: dict, path: Path | None = None) -> Path:
    """Add or replace one entry, atomically (a temporary file renamed over the cache), keeping the others."""
    path = kernel_cache_path() if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = read_cache(path)
    entries[key] = entry
    text = json.dumps({"format": "harmon linear kernels 1", "entries": entries}, indent=1, sort_keys=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text + "\n")
    os.replace(handle.name, path)
    return path


@contextlib.contextmanager
def stage_kernels(inner, kernels: dict, contexts: dict) -> Iterator[None]:
    """Within the block, the linears of each stage run on the kernel `kernels` names for it: `contexts` maps a kernel
    to the contexts (each called with a module) that switch a module's linears to it, entered in order ("mkl": none,
    `nn.Linear`'s own; "onednn": modeling_harmon_onednn's; "smallrows": oneDNN's, then modeling_harmon_smallrows' on
    top). The contexts come in as an argument: the Hub's remote-code loader fetches the modeling file's own relative
    imports, so this file importing those modules itself would break `trust_remote_code` loading."""
    with contextlib.ExitStack() as stack:
        for stage in STAGES:
            for context in contexts.get(kernels[stage], ()):
                for name in STAGE_MODULES[stage]:
                    stack.enter_context(context(getattr(inner, name)))
        yield


@contextlib.contextmanager
def stage_meter(targets: dict, clock: Callable[[], float] = time.perf_counter) -> Iterator[dict]:
    """Charge each call of the named callables to its stage, measured with `clock` (wall time by default, or e.g. a
    FLOP count). `targets` maps a stage to (owner, attribute name) pairs; each attribute is wrapped on that instance
    for the duration of the block and restored after. A call made inside another measured call (the LLM run inside
    the bridge) is charged to the outer one only. Yields {stage: total}."""
    totals, active, patched = dict.fromkeys(targets, 0.0), [], []

    def timed(stage: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def call(*args, **kwargs):
            if active:
                return function(*args, **kwargs)
            active.append(stage)
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                totals[stage] += clock() - start
                active.pop()

        return call

    try:
        for stage, places in targets.items():
            for owner, name in places:
                patched.append((owner, name, name in vars(owner), vars(owner).get(name)))
                setattr(owner, name, timed(stage, getattr(owner, name)))
        yield totals
    finally:
        for owner, name, had_own, original in reversed(patched):
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


def stage_targets(inner) -> dict:
    """The callables each generation stage's time is read from: the LLM (`bridge`, and `run_language_model` for the
    prompt pass), the MAR encoder and decoder (their forwards), the diffusion head (`diffusion.sample`)."""
    return {
        "llm": [(inner, "bridge"), (inner, "run_language_model")],
        "mar_encoder": [(inner.mar_encoder, "forward")],
        "mar_decoder": [(inner.mar_decoder, "forward")],
        "diffusion_head": [(inner.diffusion, "sample")],
    }


def stage_timer(inner):
    """[`stage_meter`] over [`stage_targets`] of the inner model, in wall time."""
    return stage_meter(stage_targets(inner))


def choose_kernels(seconds: dict[str, dict[str, float]]) -> dict:
    """Per stage, the kernel with the least measured time among those measured (MKL, the reference's product, on a
    tie)."""
    measured = [kernel for kernel in KERNELS if kernel in seconds]
    return {stage: min(measured, key=lambda kernel: (seconds[kernel][stage], kernel != "mkl")) for stage in STAGES}


__all__ = [
    "DEFAULT_KERNELS",
    "KERNELS",
    "STAGES",
    "cache_key",
    "cached_kernels",
    "check_kernels",
    "choose_kernels",
    "kernel_cache_path",
    "processor_name",
    "read_cache",
    "stage_kernels",
    "stage_meter",
    "stage_targets",
    "stage_timer",
    "write_cache_entry",
]
