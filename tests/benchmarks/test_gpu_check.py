"""benchmarks/gpu/check.py without a GPU: the nvcc command lines of the
tuning variants, builds that fail without raising, the kernel names of the
profile, and the markdown summary of a results file (the committed one)."""

import json
import pathlib
import stat

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_group_norm.json"


@pytest.fixture
def check(gpu_check):
    return gpu_check


def test_variant_defines_become_prefixed_macros(check):
    command = check.harness_command("nvcc", "lib.so", "90", defines=("REDUCE_MAX_ITERS=64", "ELEMENTWISE_TARGET_BLOCKS=528"))
    assert "-DKERAS_GN_REDUCE_MAX_ITERS=64" in command
    assert "-DKERAS_GN_ELEMENTWISE_TARGET_BLOCKS=528" in command
    assert "-gencode=arch=compute_90,code=sm_90" in command
    assert not [a for a in check.harness_command("nvcc", "lib.so") if a.startswith("-D")]


def test_every_tuning_macro_exists_in_the_kernels(check):
    source = (ROOT / "custom_ops" / "group_norm_kernels.cu").read_text()
    for name in ("REDUCE_MAX_ITERS", "REDUCE_TARGET_BLOCKS", "ELEMENTWISE_MAX_ITERS", "ELEMENTWISE_TARGET_BLOCKS"):
        assert f"#ifndef KERAS_GN_{name}" in source
    tuned = json.loads((ROOT / "benchmarks" / "results" / "gpu_tuning.json").read_text())
    for run in tuned["runs"]:
        for variant in run["variants"]:
            for define in filter(None, variant["variant"].split(",")):
                assert f"#ifndef KERAS_GN_{define.split('=')[0]}" in source, define


def test_builds_report_failures_instead_of_raising(check, tmp_path):
    missing = check.build_harness(tmp_path / "no-such-nvcc", tmp_path / "lib.so")
    assert missing[0] is False and "no-such-nvcc" in missing[2]
    failing = tmp_path / "nvcc"
    failing.write_text("#!/bin/sh\necho 'error: bad kernel' >&2\nexit 2\n")
    failing.chmod(failing.stat().st_mode | stat.S_IEXEC)
    ok, seconds, log = check.build_harness(failing, tmp_path / "lib.so", defines=("REDUCE_MAX_ITERS=8",))
    assert not ok and "error: bad kernel" in log and "-DKERAS_GN_REDUCE_MAX_ITERS=8" in log
    assert seconds >= 0


@pytest.mark.parametrize("name, short", [
    ("void keras_gn::cuda::(anonymous namespace)::MomentsCL<float, 4>(float const*, long, long)", "MomentsCL<float, 4>"),
    ("keras_gn::cuda::(anonymous namespace)::ChannelMoments(float2 const*, long)", "ChannelMoments"),
    ("void at::native::vectorized_elementwise_kernel<4>(int)", "at::native::vectorized_elementwise_kernel<4>"),
])
def test_kernel_names_are_shortened(check, name, short):
    assert check.kernel_name(name) == short


def test_summary_of_the_committed_results_is_the_committed_table(check):
    results = json.loads(RESULTS.read_text())
    table = check.summarize(results)
    assert table == (RESULTS.with_suffix(".md")).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| (")]
    assert len(rows) == 2 * len(results["speed"])
    first = results["speed"][0]["ms"]
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert float(cells[5]) == pytest.approx(first["torch_forward_channels_first"] / first["keras_gn_forward_channels_first"], abs=0.006)
    assert float(cells[6]) == pytest.approx(100 * first["copy"] / first["keras_gn_forward_channels_first"], abs=0.6)


def test_summary_marks_missing_torch_times(check):
    results = {"versions": {}, "speed": [{"shape": [2, 4, 8, 8], "dtype": "float32", "ms": {
        "copy": 1.0, "keras_gn_forward_channels_first": 2.0, "keras_gn_forward_backward_channels_first": 4.0}}]}
    rows = [line for line in check.summarize(results).splitlines() if line.startswith("| (")]
    assert rows == ["| (2, 4, 8, 8) | float32 | channels-first | 1.000 | 2.000 | - | 50 | 4.000 | - |"]
