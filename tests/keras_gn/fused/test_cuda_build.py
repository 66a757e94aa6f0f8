"""Build check of the CUDA kernels (custom_ops/group_norm_kernels.cu), no GPU
needed: the op library compiled with them registers GPU kernels for both ops
and every dtype, its CPU kernels still compute GN, the C-ABI harness of the
GPU check compiles and loads, and the GPU check's driver runs on the CPU.

None of this runs a CUDA kernel: the kernels are checked by
benchmarks/gpu/run.sh on a GPU (benchmarks/results/gpu_group_norm.md).

The nvcc is the builder's (`find_nvcc`: one of TensorFlow's CUDA major
version). Where there is none but another nvcc exists (e.g. CUDA 13 against
TensorFlow's CUDA 12), that one compiles the same sources: a compile and
registration check, not a library the builder would use.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from keras_gn.fused import builder

ROOT = pathlib.Path(__file__).resolve().parents[3]
ARCHS = ("80",)  # one target keeps the compile short; the builder's default is the visible GPUs'

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(builder.compiler() is None, reason="no C++ compiler"),
]


def _nvcc():
    """(nvcc, how it was chosen); skips with the reason when there is none."""
    try:
        return builder.find_nvcc(), "TensorFlow's CUDA major version"
    except builder.BuildError as error:
        reason = str(error)
    others = [p for p in builder._nvcc_candidates() if builder.nvcc_version(p)]
    if not others:
        pytest.skip(f"no nvcc: {reason}")
    return others[0], f"compile check only ({reason})"


def test_cuda_op_library_registers_gpu_kernels_and_keeps_cpu_kernels(tmp_path):
    nvcc, how = _nvcc()
    path = builder.build(cuda=True, nvcc=nvcc, archs=ARCHS)
    assert path.name.startswith(builder.CUDA_LIBRARY_STEM)
    # A fresh process: this one may hold the CPU-only library, which registers the same ops.
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import tensorflow as tf
        from tensorflow.python.framework import kernels
        from tests import reference

        module = tf.load_op_library(sys.argv[1])
        registered = {}
        for op in ("KerasGnGroupNorm", "KerasGnGroupNormGrad"):
            registered[op] = sorted(
                (k.device_type, tf.dtypes.as_dtype(c.allowed_values.list.type[0]).name)
                for k in kernels.get_registered_kernels_for_op(op).kernel for c in k.constraint)
        rng = np.random.default_rng(0)
        errors = {}
        for axis, shape in ((-1, (2, 5, 6, 16)), (1, (2, 16, 5, 6))):
            x = rng.normal(1.0, 2.0, shape).astype("float32")
            gamma, beta = rng.normal(size=16).astype("float32"), rng.normal(size=16).astype("float32")
            dy = rng.normal(size=shape).astype("float32")
            with tf.device("/CPU:0"):
                y, mean, rstd = module.keras_gn_group_norm(x, gamma, beta, groups=4, epsilon=1e-5,
                                                           channels_last=axis == -1, activation="silu")
                dx, dgamma, dbeta = module.keras_gn_group_norm_grad(
                    dy, x, gamma, beta, mean, rstd, groups=4, channels_last=axis == -1, activation="silu")
            want_y = reference.group_norm(x, gamma, beta, groups=4, axis=axis, activation="silu")
            want = reference.group_norm_grads(x, gamma, beta, dy, groups=4, axis=axis, activation="silu")
            errors[str(axis)] = [float(np.abs(np.asarray(y) - want_y).max())] + [
                float(np.abs(np.asarray(got) - w).max() / np.abs(w).max())
                for got, w in zip((dx, dgamma, dbeta), want)]
        print(json.dumps({"registered": registered, "errors": errors}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 0, f"{how}: {result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for op, entries in report["registered"].items():
        for device in ("GPU", "CPU"):
            assert {d for dev, d in entries if dev == device} == {"float32", "float16", "bfloat16"}, (op, entries)
    for axis, (y_error, dx_error, dgamma_error, dbeta_error) in report["errors"].items():
        assert y_error < 1e-5, axis
        assert max(dx_error, dgamma_error, dbeta_error) < 1e-4, axis


def test_cuda_build_failure_is_a_build_error_with_nvccs_message(monkeypatch, tmp_path):
    nvcc, _ = _nvcc()
    broken = tmp_path / "group_norm_kernels.cu"
    broken.write_text("this is not CUDA;\n")
    monkeypatch.setattr(builder, "CUDA_SOURCE", broken)
    monkeypatch.setenv("KERAS_GN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(builder.BuildError, match="compiling group_norm_kernels.cu failed") as error:
        builder.build(cuda=True, nvcc=nvcc, archs=ARCHS)
    assert "error" in str(error.value)
    assert not [p for p in (tmp_path / "cache" / "ops").glob("*") if p.is_file()]


def test_gpu_check_harness_compiles_and_loads(tmp_path, gpu_check):
    nvcc, _ = _nvcc()
    check = gpu_check
    library = tmp_path / "libkeras_gn_cuda.so"
    ok, seconds, log = check.build_harness(nvcc, library, arch=ARCHS[0])
    assert ok, log[-4000:]
    harness = check.Harness(library)  # ctypes: every function of the C ABI resolves
    dims = check.view((8, 512, 64, 64), channels_last=False)
    assert harness.workspace_bytes(dims, 32, "float16") > 0
    assert harness.workspace_bytes(dims, 32, "float32", backward=True) > 0
    with pytest.raises(RuntimeError, match="CUDA error"):  # groups must divide the channels
        harness.workspace_bytes(dims, 33, "float16")


def test_gpu_check_dry_run():
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "check.py"), "--dry-run"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dry run passed" in result.stdout


def test_gpu_check_tuning_variant_compiles(tmp_path, gpu_check):
    nvcc, _ = _nvcc()
    check = gpu_check
    defines = ("REDUCE_MAX_ITERS=4", "REDUCE_TARGET_BLOCKS=64", "ELEMENTWISE_MAX_ITERS=2", "ELEMENTWISE_TARGET_BLOCKS=32",
               "SINGLE_PASS_CL_ROW_BYTES=16", "GROUP_THREADS_HALF=128")
    ok, _, log = check.build_harness(nvcc, tmp_path / "variant.so", arch=ARCHS[0], defines=defines)
    assert ok, log[-4000:]
    check.Harness(tmp_path / "variant.so")
