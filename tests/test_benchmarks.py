"""The benchmark scripts: their analytic FLOP counts against torch's FLOP counter, and their reports' shape.

Nothing here checks a time (tests never time); the runs are tiny and only their bookkeeping is checked.
"""

import dataclasses
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import analytic, bench_generate, bench_understand
from benchmarks.common import build_model, stage_meter
from modeling_harmon import HarmonSamplingSpeedups, modeling_harmon_diffusion
from modeling_harmon.modeling_harmon_canvas import scaled_iterations
from modeling_harmon.modeling_harmon_kernels import DEFAULT_KERNELS
from modeling_harmon.modeling_harmon_onednn import onednn_linear_available


STAGE_NAMES = (*analytic.STAGES, "other")


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """QK^T and AV of torch's fused CPU attention kernel, which FlopCounterMode does not know (the CUDA kernels it
    does know get the same formula)."""
    batch, heads, queries, head_dim = query_shape
    return 4 * batch * heads * queries * key_shape[-2] * head_dim


def onednn_linear_flops(input_shape, *args, out_shape=None, **kwargs):
    """The pre-packed oneDNN linear (`HarmonSamplingSpeedups.onednn_linears`): 2 * rows * in * out."""
    return 2 * math.prod(input_shape) * out_shape[-1]


COUNTED_CPU_KERNELS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
    torch.ops.mkldnn._linear_pointwise: onednn_linear_flops,
}


@pytest.fixture(scope="module")
def tiny_bench_model():
    onednn_linear_available()  # its one-time probe product would otherwise land in a counted run's "other"
    return build_model("tiny", "fp32", "cpu")


def counted_stage_flops(model, speedups, guidance_scale: float) -> dict[str, float]:
    """FLOPs per stage of one tiny generation, from torch's counter read around each stage call."""
    args = bench_generate.parse_args(
        [
            "--preset",
            "tiny",
            "--size",
            "32",
            "--num-iter",
            "4",
            "--head-steps",
            "5",
            "--batch",
            "2",
            "--cfg",
            str(guidance_scale),
        ]
    )
    prompts = bench_generate.synthetic_prompts(model.config, args.batch, "cpu")
    previous = model.sampling_speedups
    model.sampling_speedups = speedups
    try:
        counter = FlopCounterMode(display=False, custom_mapping=COUNTED_CPU_KERNELS)
        with counter, stage_meter(bench_generate.stage_targets(model), counter.get_total_flops) as totals:
            bench_generate.generate(model, prompts, args, args.num_iter, args.head_steps)
    finally:
        model.sampling_speedups = previous
    return {**totals, "other": counter.get_total_flops() - sum(totals.values())}


@pytest.mark.parametrize(
    "speedups, guidance_scale, chunk_bytes",
    [
        (HarmonSamplingSpeedups(), 3.0, None),
        (HarmonSamplingSpeedups.none(), 3.0, None),
        (HarmonSamplingSpeedups(), 1.0, None),
        (HarmonSamplingSpeedups(), 3.0, 4096),  # head modulations precomputed in several chunks of steps
    ],
    ids=["all-shortcuts", "no-shortcuts", "no-cfg", "chunked-modulations"],
)
def test_analytic_flops_match_the_flop_counter(tiny_bench_model, monkeypatch, speedups, guidance_scale, chunk_bytes):
    if chunk_bytes is not None:
        monkeypatch.setattr(modeling_harmon_diffusion, "_MODULATION_CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(analytic, "_MODULATION_CHUNK_BYTES", chunk_bytes)
    counted = counted_stage_flops(tiny_bench_model, speedups, guidance_scale)
    prompt_length = bench_generate.PROMPT_LENGTH
    if guidance_scale != 1.0:
        prompt_length = max(prompt_length, bench_generate.UNCONDITIONAL_PROMPT_LENGTH)
    shape = analytic.GenerationShape(
        batch=2,
        size=32,
        num_iter=4,
        head_steps=5,
        guidance_scale=guidance_scale,
        prompt_length=prompt_length,
        dtype_bytes=4,
    )
    costs = analytic.generation_costs(tiny_bench_model.config, shape, speedups)
    for stage in analytic.STAGES:
        assert counted[stage] > 0
        assert costs[stage].flops == pytest.approx(counted[stage], rel=0.10), stage
    assert counted["other"] == 0  # every counted product happens inside a measured stage


def test_stage_meter_counts_nested_calls_once_and_restores():
    class Part:
        def outer(self):
            return self.inner() + 1

        def inner(self):
            return 1

    part, ticks = Part(), iter(range(100))
    with stage_meter({"a": [(part, "outer")], "b": [(part, "inner")]}, lambda: next(ticks)) as totals:
        assert part.outer() == 2  # inner runs inside outer: charged to "a" only
        assert part.inner() == 1
    assert totals == {"a": 1, "b": 1}
    assert "outer" not in vars(part) and "inner" not in vars(part)


def test_child_arguments_rebuild_the_same_run():
    args = bench_generate.parse_args(
        [
            "--preset",
            "tiny",
            "--size",
            "48",
            "--num-iter",
            "3",
            "--batch",
            "2",
            "--dtype",
            "bf16",
            "--cfg",
            "2.5",
            "--ablate",
        ]
    )
    child = bench_generate.parse_args(bench_generate.child_argv(args))
    for name in ("preset", "size", "num_iter", "batch", "dtype", "threads", "head_steps", "cfg", "device", "repeats"):
        assert getattr(child, name) == getattr(args, name), name


@pytest.mark.parametrize(
    "argv",
    [
        ["--size", "40"],
        ["--size", "32", "--num-iter", "65"],
        ["--head-steps", "0"],
        ["--cfg", "0.5"],
        ["--dtype", "fp8"],
        ["--batch", "0"],
        ["--device", "tpu"],
    ],
)
def test_generate_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        bench_generate.parse_args(["--preset", "tiny", *argv])


def test_generate_report(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_generate, "MATMUL_SIZE", 128)
    monkeypatch.setattr(bench_generate, "COPY_BYTES", 4 * 1024**2)
    path = tmp_path / "generate.json"
    bench_generate.main(
        [
            "--preset",
            "tiny",
            "--size",
            "32",
            "--num-iter",
            "3",
            "--head-steps",
            "2",
            "--batch",
            "2",
            "--in-process",
            "--ablate",
            "--json",
            str(path),
        ]
    )
    report = json.loads(path.read_text())
    for key in (
        "preset",
        "size",
        "num_iter",
        "batch",
        "dtype",
        "threads",
        "head_steps",
        "cfg",
        "device",
        "per_image_s",
        "peak_rss_bytes",
        "torch_version",
        "cpu",
    ):
        assert key in report, key
    assert report["ceiling"]["matmul_gflops"] > 0 and report["ceiling"]["copy_gbps"] > 0
    fields = [field.name for field in dataclasses.fields(HarmonSamplingSpeedups) if field.name != "linear_kernels"]
    assert set(report["ablations"]) == set(fields)  # the kernel choice is no shortcut: --kernels sets it
    configurations = [report, report["baseline"], *(report["ablations"][field] for field in fields)]
    for result in (report, report["baseline"]):  # a fresh process's first call, timed apart from the warm runs
        assert result["first_call"]["total_s"] > 0
        assert math.isclose(
            sum(result["first_call"]["stages"].values()), result["first_call"]["total_s"], rel_tol=1e-9
        )
    assert report["linear_kernels"] == DEFAULT_KERNELS and report["baseline"]["linear_kernels"] is None
    for result in configurations:
        assert set(result["stages"]) == set(STAGE_NAMES)
        assert math.isclose(sum(result["stages"].values()), result["total_s"], rel_tol=1e-9)
        assert set(result["analytic"]) == set(analytic.STAGES)
        assert all(set(cost) == {"gflop", "weight_gbytes", "floor_s"} for cost in result["analytic"].values())
        assert math.isclose(result["floor_s"], sum(cost["floor_s"] for cost in result["analytic"].values()))
        assert result["peak_rss_bytes"] > 0
    assert report["speedup"] == pytest.approx(report["baseline"]["total_s"] / report["total_s"])
    # the baseline does strictly more work: both CFG halves through the encoder and the VAE
    assert report["baseline"]["analytic"]["vae"]["gflop"] == pytest.approx(2 * report["analytic"]["vae"]["gflop"])
    assert report["compiled"] is None


def test_generate_inpaint_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_generate, "MATMUL_SIZE", 128)
    monkeypatch.setattr(bench_generate, "COPY_BYTES", 4 * 1024**2)
    path = tmp_path / "generate.json"
    argv = ["--preset", "tiny", "--size", "32", "--num-iter", "4", "--head-steps", "2", "--no-baseline"]
    bench_generate.main([*argv, "--inpaint", "--in-process", "--json", str(path)])
    report = json.loads(path.read_text())
    cell = report["inpaint"]
    assert (cell["tokens"], cell["tokens_drawn"], cell["share_drawn"]) == ((32 // 4) ** 2, 32, 0.5)
    # no num_iter passed: the model scales the run's full-image count (4) by the share drawn
    assert cell["iterations"] == scaled_iterations(4, 32, 64) == 2
    assert set(cell["stages"]) == {*STAGE_NAMES, "vae_encode"} and cell["stages"]["vae_encode"] > 0
    assert math.isclose(sum(cell["stages"].values()), cell["total_s"], rel_tol=1e-9)
    assert cell["t2i_s"] == report["total_s"]
    assert cell["ratio"] == pytest.approx(cell["total_s"] / report["total_s"])
    assert cell["cpu_ratio"] == pytest.approx(cell["cpu_s"] / report["cpu_s"]) and cell["cpu_s"] > 0
    assert cell["expected_ratio"] == pytest.approx(0.5 + cell["stages"]["vae_encode"] / report["total_s"])
    assert len(cell["repeat_total_s"]) == report["repeats"] == 1
    assert "analytic" not in cell and report["baseline"] is None


@pytest.mark.parametrize("image_cfg, groups", [("1.5", 3), ("1", 2)])
def test_generate_edit_cell(tmp_path, monkeypatch, image_cfg, groups):
    monkeypatch.setattr(bench_generate, "MATMUL_SIZE", 128)
    monkeypatch.setattr(bench_generate, "COPY_BYTES", 4 * 1024**2)
    path = tmp_path / "generate.json"
    argv = ["--preset", "tiny", "--size", "32", "--num-iter", "4", "--head-steps", "2", "--no-baseline"]
    bench_generate.main([*argv, "--edit", "--image-cfg", image_cfg, "--in-process", "--json", str(path)])
    report = json.loads(path.read_text())
    cell = report["edit"]
    assert (cell["row_groups"], cell["rows_ratio"]) == (groups, groups / 2) and report["image_cfg"] == float(image_cfg)
    # the context image went through the understanding path (its VAE encode), with the run's own kernels
    assert set(cell["stages"]) == {*STAGE_NAMES, "vae_encode"} and cell["stages"]["vae_encode"] > 0
    assert cell["same_kernels"] and cell["linear_kernels"] == report["linear_kernels"]
    assert math.isclose(sum(cell["stages"].values()), cell["total_s"], rel_tol=1e-9)
    assert cell["ratio"] == pytest.approx(cell["total_s"] / report["total_s"]) and cell["t2i_s"] == report["total_s"]
    assert cell["stage_ratios"]["diffusion_head"] == pytest.approx(
        cell["stages"]["diffusion_head"] / report["stages"]["diffusion_head"]
    )
    assert "analytic" not in cell and report["inpaint"] is None


def test_the_edit_cell_refuses_a_bad_image_guidance():
    with pytest.raises(SystemExit):
        bench_generate.parse_args(["--preset", "tiny", "--size", "32", "--edit", "--image-cfg", "0.5"])


def test_inpaint_cell_redraws_exactly_half_or_refuses():
    image, mask = bench_generate.inpaint_canvas(256, 16)  # the anchor's grid
    assert image.shape == (3, 256, 256) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert bench_generate.canvas_facts((image, mask), 256, 16)["share_drawn"] == 0.5
    with pytest.raises(SystemExit):  # 48 px at stride 16: 3 token columns, no exact half
        bench_generate.parse_args(["--preset", "0.5b-shaped-4l", "--size", "48", "--num-iter", "4", "--inpaint"])


def test_understand_report(tmp_path):
    path = tmp_path / "understand.json"
    bench_understand.main(
        ["--preset", "tiny", "--size", "32", "--new-tokens", "4", "--repeats", "1", "--json", str(path)]
    )
    report = json.loads(path.read_text())
    ours, plain = report["ours"], report["plain"]
    assert report["image_tokens"] == (32 // 4) ** 2 + 4  # tiny: token stride 4, 4 buffers
    assert report["prompt_tokens"] > report["image_tokens"]
    assert set(ours["prefill_stages"]) == {"vae", "mar_encoder", "llm", "other"}
    assert math.isclose(sum(ours["prefill_stages"].values()), ours["prefill_s"], rel_tol=1e-9)
    assert all(result["prefill_s"] > 0 and result["decode_tokens_per_s"] > 0 for result in (ours, plain))
    expected = (plain["decode_tokens_per_s"] / ours["decode_tokens_per_s"] - 1) * 100
    assert report["decode_overhead_pct"] == pytest.approx(expected)


def test_head_profile_reports_parts_and_bounds(tmp_path):
    from benchmarks import head_profile

    path = tmp_path / "head.json"
    argv = ["--preset", "tiny", "--rows", "4", "--steps", "3", "--repeats", "1", "--rate-size", "64"]
    result = head_profile.main([*argv, "--json", str(path)])
    assert json.loads(path.read_text()) == result and result["rows"] == 4 and result["cpu"]
    bounds = result["bounds"]
    config = head_profile.build_model("tiny", "fp32", "cpu").config
    width, depth = config.diffusion_head_width, config.diffusion_head_depth
    assert bounds["weight_bytes"] == 2 * depth * width * width * 4  # two width x width products per block, fp32
    assert bounds["weight_bytes"] > 0 and bounds["read_weights_s"] > 0 and bounds["compute_s"] > 0
    assert "mkl" in result["kernels"]
    for timing in result["kernels"].values():
        assert timing["products_over_bound"] == pytest.approx(
            timing["products_s"] / max(bounds["read_weights_s"], bounds["compute_s"])
        )
        assert timing["elementwise_s"] == pytest.approx(timing["chain_step_s"] - timing["products_s"])
        assert timing["modulations_s"] > 0
    with pytest.raises(SystemExit):
        head_profile.parse_args(["--rows", "0"])
