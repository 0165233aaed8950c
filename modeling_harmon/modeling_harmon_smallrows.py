"""A matrix product for linear layers called on a few rows: the diffusion head's per-step products.

Why this is written by hand: at 64 MAR iterations the head runs each of its 12 per-step products (1024 x 1024 for
the released models) on about 8 rows, 100 times per iteration. MKL's and oneDNN's products are built for many rows:
at 8 they reach 2.4x the larger of the products' bandwidth and FLOP bounds (benchmarks/NOTES.md, "The diffusion head
at batch 1"), and `torch.compile`'s C++ micro-GEMM lost to both in the real step. No library installed here offers a
product for so few rows, so this module carries one: the weight is re-laid-out once per generation call into panels
of 32 output columns, stored k-major, so one pass streams it from memory exactly once while every row's inputs stay
in registers and the cache (`harmon_small_rows_f32`, AVX-512 with FMA; `harmon_small_rows_bf16`, AVX512-BF16's pair
dot product, where the CPU has it).

The C source below is compiled on first use with the system's C compiler into the user's kernel cache folder (a
file named by the source's hash), and loaded with ctypes; without a compiler, without AVX-512, or off Linux/macOS the
kernel is unavailable and `harmon tune` never picks it. It runs only where the user chose it (`linear_kernels`) or
`harmon tune` measured it faster on this host. Results equal `nn.Linear`'s up to float rounding (the products sum in
another order).

Uploaded with the model code (remote code): imports only the standard library and torch.
"""

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


# Products on at most this many rows use the kernel (one register block: every weight is read once); more rows go to
# the layer's other product. At 16 and 32 rows the kernel only matched oneDNN's (1024 x 1024, AMD EPYC, one thread).
SMALL_ROWS = 12
PANEL = 32  # output columns per packed panel: two AVX-512 vectors of float32

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

#define PANEL 32

int harmon_small_rows_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

/* weight (N, K) row-major -> panels[N/32 rounded up][K][32], zero-padded past N. */
void harmon_pack_f32(const float *weight, int64_t n, int64_t k, float *panels) {
    int64_t count = (n + PANEL - 1) / PANEL;
    for (int64_t p = 0; p < count; p++)
        for (int64_t j = 0; j < k; j++)
            for (int64_t c = 0; c < PANEL; c++) {
                int64_t row = p * PANEL + c;
                panels[(p * k + j) * PANEL + c] = row < n ? weight[row * k + j] : 0.0f;
            }
}

static inline __mmask16 lanes(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* R rows of x (row stride k) times every panel: two accumulators of 16 columns per row live in registers while the
   panel streams through once. */
#define ROWS(R)                                                                                                      \
__attribute__((target("avx512f,fma")))                                                                               \
static void rows_##R(const float *x, int64_t k, const float *panels, const float *bias, int64_t n, float *y) {    \
    int64_t count = (n + PANEL - 1) / PANEL;                                                                         \
    for (int64_t p = 0; p < count; p++) {                                                                            \
        int64_t left = n - p * PANEL;                                                                                \
        __mmask16 low = lanes(left), high = lanes(left - 16);                                                        \
        __m512 bias0 = bias ? _mm512_maskz_loadu_ps(low, bias + p * PANEL) : _mm512_setzero_ps();                   \
        __m512 bias1 = bias ? _mm512_maskz_loadu_ps(high, bias + p * PANEL + 16) : _mm512_setzero_ps();             \
        __m512 acc0[R], acc1[R];                                                                                     \
        for (int r = 0; r < R; r++) { acc0[r] = bias0; acc1[r] = bias1; }                                           \
        const float *w = panels + p * k * PANEL;                                                                     \
        for (int64_t j = 0; j < k; j++) {                                                                            \
            _mm_prefetch((const char *)(w + (j + 64) * PANEL), _MM_HINT_T0);                                         \
            _mm_prefetch((const char *)(w + (j + 64) * PANEL + 16), _MM_HINT_T0);                                    \
            __m512 w0 = _mm512_loadu_ps(w + j * PANEL), w1 = _mm512_loadu_ps(w + j * PANEL + 16);                   \
            for (int r = 0; r < R; r++) {                                                                            \
                __m512 v = _mm512_set1_ps(x[r * k + j]);                                                             \
                acc0[r] = _mm512_fmadd_ps(v, w0, acc0[r]);                                                           \
                acc1[r] = _mm512_fmadd_ps(v, w1, acc1[r]);                                                           \
            }                                                                                                        \
        }                                                                                                            \
        for (int r = 0; r < R; r++) {                                                                                \
            _mm512_mask_storeu_ps(y + r * n + p * PANEL, low, acc0[r]);                                              \
            _mm512_mask_storeu_ps(y + r * n + p * PANEL + 16, high, acc1[r]);                                        \
        }                                                                                                            \
    }                                                                                                                \
}

ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8) ROWS(9) ROWS(10) ROWS(11) ROWS(12)

typedef void (*rows_fn)(const float *, int64_t, const float *, const float *, int64_t, float *);
static const rows_fn BLOCKS[13] = {0, rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8, rows_9,
                                   rows_10, rows_11, rows_12};

/* y (m, n) = x (m, k) @ weight.T + bias, the weight given as panels of harmon_pack_f32; x and y contiguous. */
void harmon_small_rows_f32(const float *x, int64_t m, int64_t k, const float *panels, const float *bias, int64_t n,
                           float *y) {
    for (int64_t row = 0; row < m; row += 12) {
        int64_t block = m - row < 12 ? m - row : 12;
        BLOCKS[block](x + row * k, k, panels, bias, n, y + row * n);
    }
}

/* bfloat16, with AVX512-BF16's pair dot product: float32 sums, rounded to bfloat16 (nearest even) once at the end,
   as oneDNN's bfloat16 product does. Values travel as their 16-bit patterns. */
int harmon_small_rows_bf16_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

/* weight (N, K) -> panels[N/32 rounded up][K/2 rounded up][32][2]: each column's pair (k, k + 1) side by side, zero
   past N and K. */
void harmon_pack_bf16(const uint16_t *weight, int64_t n, int64_t k, uint16_t *panels) {
    int64_t count = (n + PANEL - 1) / PANEL, pairs = (k + 1) / 2;
    for (int64_t p = 0; p < count; p++)
        for (int64_t j = 0; j < pairs; j++)
            for (int64_t c = 0; c < PANEL; c++)
                for (int64_t t = 0; t < 2; t++) {
                    int64_t row = p * PANEL + c, col = 2 * j + t;
                    panels[((p * pairs + j) * PANEL + c) * 2 + t] = row < n && col < k ? weight[row * k + col] : 0;
                }
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __m512 bf16_lanes(__mmask16 mask, const uint16_t *values) {
    __m256i half = _mm256_maskz_loadu_epi16(mask, values);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

/* x: R rows of an even number k of values (the caller pads an odd k with a zero). */
#define ROWS_BF16(R)                                                                                                 \
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))                                                     \
static void rows_bf16_##R(const uint16_t *x, int64_t k, const uint16_t *panels, const uint16_t *bias, int64_t n,   \
                          uint16_t *y) {                                                                             \
    int64_t count = (n + PANEL - 1) / PANEL, pairs = k / 2;                                                          \
    for (int64_t p = 0; p < count; p++) {                                                                            \
        int64_t left = n - p * PANEL;                                                                                \
        __mmask16 low = lanes(left), high = lanes(left - 16);                                                        \
        __m512 bias0 = bias ? bf16_lanes(low, bias + p * PANEL) : _mm512_setzero_ps();                               \
        __m512 bias1 = bias ? bf16_lanes(high, bias + p * PANEL + 16) : _mm512_setzero_ps();                         \
        __m512 acc0[R], acc1[R];                                                                                     \
        for (int r = 0; r < R; r++) { acc0[r] = bias0; acc1[r] = bias1; }                                           \
        const uint16_t *w = panels + p * pairs * 2 * PANEL;                                                          \
        for (int64_t j = 0; j < pairs; j++) {                                                                        \
            _mm_prefetch((const char *)(w + (j + 64) * 2 * PANEL), _MM_HINT_T0);                                     \
            _mm_prefetch((const char *)(w + (j + 64) * 2 * PANEL + 32), _MM_HINT_T0);                                \
            __m512i w0 = _mm512_loadu_si512(w + j * 2 * PANEL), w1 = _mm512_loadu_si512(w + j * 2 * PANEL + 32);    \
            for (int r = 0; r < R; r++) {                                                                            \
                int32_t pair;                                                                                        \
                __builtin_memcpy(&pair, x + r * k + 2 * j, sizeof(pair));                                            \
                __m512i v = _mm512_set1_epi32(pair);                                                                 \
                acc0[r] = _mm512_dpbf16_ps(acc0[r], (__m512bh)w0, (__m512bh)v);                                     \
                acc1[r] = _mm512_dpbf16_ps(acc1[r], (__m512bh)w1, (__m512bh)v);                                     \
            }                                                                                                        \
        }                                                                                                            \
        for (int r = 0; r < R; r++) {                                                                                \
            _mm256_mask_storeu_epi16(y + r * n + p * PANEL, low, (__m256i)_mm512_cvtneps_pbh(acc0[r]));              \
            _mm256_mask_storeu_epi16(y + r * n + p * PANEL + 16, high, (__m256i)_mm512_cvtneps_pbh(acc1[r]));        \
        }                                                                                                            \
    }                                                                                                                \
}

ROWS_BF16(1) ROWS_BF16(2) ROWS_BF16(3) ROWS_BF16(4) ROWS_BF16(5) ROWS_BF16(6) ROWS_BF16(7) ROWS_BF16(8) ROWS_BF16(9)
ROWS_BF16(10) ROWS_BF16(11) ROWS_BF16(12)

typedef void (*rows_bf16_fn)(const uint16_t *, int64_t, const uint16_t *, const uint16_t *, int64_t, uint16_t *);
static const rows_bf16_fn BLOCKS_BF16[13] = {0, rows_bf16_1, rows_bf16_2, rows_bf16_3, rows_bf16_4, rows_bf16_5,
                                             rows_bf16_6, rows_bf16_7, rows_bf16_8, rows_bf16_9, rows_bf16_10,
                                             rows_bf16_11, rows_bf16_12};

/* As harmon_small_rows_f32, on bfloat16 patterns; k even (padded by the caller), panels of harmon_pack_bf16. */
void harmon_small_rows_bf16(const uint16_t *x, int64_t m, int64_t k, const uint16_t *panels, const uint16_t *bias,
                            int64_t n, uint16_t *y) {
    for (int64_t row = 0; row < m; row += 12) {
        int64_t block = m - row < 12 ? m - row : 12;
        BLOCKS_BF16[block](x + row * k, k, panels, bias, n, y + row * n);
    }
}
"""

_library: ctypes.CDLL | None = None
_tried: set[str] = set()
_dtypes: list[torch.dtype] = []  # what the loaded library serves on this CPU


def library_path(folder: Path) -> Path:
    """Where the compiled kernel lives in `folder`: named by the hash of its source, so an edited source is rebuilt
    and never mistaken for an older build."""
    digest = hashlib.sha256(_SOURCE.encode()).hexdigest()[:16]
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return Path(folder) / f"harmon_small_rows_{digest}{suffix}"


def _compile(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".harmon-build-") as build:
        source, output = Path(build) / "small_rows.c", Path(build) / target.name
        source.write_text(_SOURCE)
        subprocess.run(
            [compiler, "-O3", "-shared", "-fPIC", str(source), "-o", str(output)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.replace(output, target)  # atomic: a concurrent build or load sees the old file or the whole new one


def load_small_row_library(folder: Path) -> ctypes.CDLL | None:
    """The kernel library, built into `folder` if it is not there yet; None where it cannot run here (no compiler, a
    failed build, a CPU without AVX-512 and FMA, another operating system). A process keeps the first library it
    loads and returns it to later calls whatever their folder; a folder that failed is not tried again."""
    global _library
    if _library is not None:
        return _library
    path = library_path(folder)
    if sys.platform not in ("linux", "darwin") or str(path) in _tried:
        return None
    _tried.add(str(path))
    try:
        if not path.exists():
            _compile(path)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    library.harmon_small_rows_supported.restype = ctypes.c_int
    if not library.harmon_small_rows_supported():
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.harmon_pack_f32.argtypes = [pointer, size, size, pointer]
    library.harmon_pack_f32.restype = None
    library.harmon_small_rows_f32.argtypes = [pointer, size, size, pointer, pointer, size, pointer]
    library.harmon_small_rows_f32.restype = None
    library.harmon_small_rows_bf16_supported.restype = ctypes.c_int
    library.harmon_pack_bf16.argtypes = [pointer, size, size, pointer]
    library.harmon_pack_bf16.restype = None
    library.harmon_small_rows_bf16.argtypes = [pointer, size, size, pointer, pointer, size, pointer]
    library.harmon_small_rows_bf16.restype = None
    _dtypes[:] = [torch.float32] + ([torch.bfloat16] if library.harmon_small_rows_bf16_supported() else [])
    _library = library
    return library


def small_row_dtypes(folder: Path) -> tuple[torch.dtype, ...]:
    """The dtypes the kernel serves here: float32 where it runs at all, bfloat16 too on CPUs with AVX512-BF16."""
    return tuple(_dtypes) if load_small_row_library(folder) is not None else ()


def pack_weight(library: ctypes.CDLL, weight: torch.Tensor) -> torch.Tensor:
    """A float32 or bfloat16 (N, K) weight as the kernel's panels (a flat tensor of its dtype)."""
    weight = weight.detach().contiguous()
    rows, columns = weight.shape
    count = (rows + PANEL - 1) // PANEL
    if weight.dtype == torch.bfloat16:
        panels = torch.empty(count * PANEL * 2 * ((columns + 1) // 2), dtype=torch.bfloat16)
        library.harmon_pack_bf16(weight.data_ptr(), rows, columns, panels.data_ptr())
    else:
        panels = torch.empty(count * PANEL * columns, dtype=torch.float32)
        library.harmon_pack_f32(weight.data_ptr(), rows, columns, panels.data_ptr())
    return panels


def small_row_linear(library: ctypes.CDLL, inputs: torch.Tensor, panels: torch.Tensor, bias, out_features: int):
    """`F.linear` of `inputs` (..., K) on packed panels of the same dtype (float32 or bfloat16; `bias` too)."""
    flat = inputs.reshape(-1, inputs.shape[-1])
    function = library.harmon_small_rows_f32
    if inputs.dtype == torch.bfloat16:
        function = library.harmon_small_rows_bf16
        if flat.shape[1] % 2:  # the pair product reads K in pairs: a zero closes the last one
            flat = nn.functional.pad(flat, (0, 1))
    flat = flat.contiguous()
    output = torch.empty(flat.shape[0], out_features, dtype=inputs.dtype)
    function(
        flat.data_ptr(),
        flat.shape[0],
        flat.shape[1],
        panels.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out_features,
        output.data_ptr(),
    )
    return output.reshape(*inputs.shape[:-1], out_features)


class _SmallRowLinearForward:
    """Replacement `forward` of one `nn.Linear`: calls on at most SMALL_ROWS rows in a dtype the kernel serves here
    (float32; bfloat16 with AVX512-BF16) run the kernel (the weight packed at the first such call, and again if it is
    changed in place); every other call goes to the forward the layer had before (a packed oneDNN product, or
    `nn.Linear`'s own)."""

    def __init__(self, layer: nn.Linear, library: ctypes.CDLL, previous):
        self.layer, self.library, self.previous = layer, library, previous
        self.panels = None
        self.panels_version = None

    def _servable(self, inputs: torch.Tensor) -> bool:
        weight = self.layer.weight
        return (
            weight.device.type == "cpu"
            and weight.dtype in _dtypes
            and inputs.dtype == weight.dtype
            and inputs.device.type == "cpu"
            and inputs.dim() >= 1
            and inputs.numel() // max(inputs.shape[-1], 1) <= SMALL_ROWS
            and inputs.numel() > 0
            and not (torch.is_grad_enabled() and (weight.requires_grad or inputs.requires_grad))
        )

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not self._servable(inputs):
            if self.previous is not None:
                return self.previous(inputs)
            return nn.functional.linear(inputs, layer.weight, layer.bias)
        if self.panels is None or self.panels_version != layer.weight._version:
            self.panels = pack_weight(self.library, layer.weight)
            self.panels_version = layer.weight._version
        bias = None if layer.bias is None else layer.bias.detach().to(layer.weight.dtype).contiguous()
        return small_row_linear(self.library, inputs, self.panels, bias, layer.out_features)


@contextlib.contextmanager
def small_row_linears(module: nn.Module, folder: Path, enabled: bool = True) -> Iterator[int]:
    """Within the block, every plain `nn.Linear` of `module` runs its calls on few rows through the kernel (float32;
    bfloat16 where the CPU has AVX512-BF16), built into `folder` if needed; other calls reach the forward the layer had (enter oneDNN's context first to
    keep it for the many-row calls). Yields the number of layers switched: 0 when disabled or unavailable here. The
    packed panels are freed when the block exits."""
    library = load_small_row_library(folder) if enabled else None
    patched = []
    if library is not None:
        for layer in module.modules():
            if type(layer) is nn.Linear:
                previous = layer.__dict__.get("forward")
                layer.forward = _SmallRowLinearForward(layer, library, previous)
                patched.append((layer, previous))
    try:
        yield len(patched)
    finally:
        for layer, previous in reversed(patched):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous


def small_row_kernel_available(folder: Path) -> bool:
    """Whether the kernel can run here (building it into `folder` if needed)."""
    return load_small_row_library(folder) is not None


__all__ = [
    "SMALL_ROWS",
    "load_small_row_library",
    "small_row_kernel_available",
    "small_row_dtypes",
    "small_row_linear",
    "small_row_linears",
]
