"""Tests of building and loading the fused op: the cache key, the prebuild
command, and the fallback when no compiler is found or compilation fails."""

import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from keras_gn.fused import builder

pytestmark = pytest.mark.skipif(builder.compiler() is None, reason="no C++ compiler")


def test_library_name_is_keyed_by_tf_version_and_source(tmp_path, monkeypatch):
    path = builder.library_path(builder.compiler())
    assert path.name.startswith(f"keras_gn_group_norm_op-tf{tf.__version__}-")
    changed = tmp_path / "group_norm_op.cc"
    changed.write_bytes(builder.SOURCE.read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(builder, "SOURCE", changed)
    assert builder.library_path(builder.compiler()) != path


def test_build_is_cached(monkeypatch, tmp_path, capsys):
    path = builder.build()  # built already by the op tests, or now
    mtime = path.stat().st_mtime_ns
    capsys.readouterr()
    assert builder.build() == path
    assert capsys.readouterr().err == ""  # nothing to announce
    assert path.stat().st_mtime_ns == mtime


def fake_compiler(tmp_path, predefined):
    """A "compiler" whose preprocessor run (`-dM -E`) prints `predefined`."""
    script = tmp_path / "fake-g++"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{predefined}'\n")
    script.chmod(0o755)
    return str(script)


def test_avx512_fp16_is_left_out_where_march_enables_it(tmp_path):
    # TensorFlow's Eigen does not compile for AVX512-FP16 (Sapphire Rapids):
    # with -march=native there, the op failed to build and the layer fell back.
    cxx = fake_compiler(tmp_path, "#define __AVX512F__ 1\n#define __AVX512FP16__ 1")
    assert builder.isa_exclusions(cxx, "native") == ["-mno-avx512fp16"]
    assert "-mno-avx512fp16" in builder.command(cxx, "OUT")


def test_nothing_is_left_out_where_march_does_not_enable_avx512_fp16(tmp_path):
    cxx = fake_compiler(tmp_path, "#define __AVX512F__ 1\n#define __AVX2__ 1")
    assert builder.isa_exclusions(cxx, "native") == []
    assert not [flag for flag in builder.command(cxx, "OUT") if flag.startswith("-mno-")]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_GN_CACHE_DIR", str(tmp_path / "cache"))
    assert builder.library_path(builder.compiler()).parent == tmp_path / "cache" / "ops"


def test_missing_compiler_is_a_build_error(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(builder.BuildError, match="no C\\+\\+ compiler found"):
        builder.build()


def test_failed_compilation_is_a_build_error_with_the_compiler_output(monkeypatch, tmp_path, capsys):
    broken = tmp_path / "group_norm_op.cc"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(builder, "SOURCE", broken)
    monkeypatch.setenv("KERAS_GN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(builder.BuildError, match="compiling group_norm_op.cc failed") as error:
        builder.build()
    assert "error" in str(error.value)
    # Its first line, all the layer's fallback warning shows, names the error.
    assert "group_norm_op.cc:1:" in str(error.value).splitlines()[0]
    # A compilation is announced, once, before the wait.
    assert capsys.readouterr().err.count("keras_gn: building the fused GroupNormalization op (once") == 1
    assert not list((tmp_path / "cache" / "ops").glob("*"))  # no partial library left


def run_python(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}, timeout=300)


def test_without_a_compiler_the_layer_falls_back_with_one_log_line(tmp_path):
    result = run_python(
        """
        import numpy as np
        import keras_gn
        x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
        for _ in range(3):
            y = keras_gn.GroupNormalization(groups=2)(x)
        assert abs(float(np.mean(y))) < 1e-5
        try:
            keras_gn.GroupNormalization(groups=2, implementation="fused")(x)
        except ValueError as error:
            print("FUSED ERROR:", error)
        """,
        {"CXX": "/nonexistent/g++", "KERAS_GN_CACHE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [l for l in result.stderr.splitlines() if "fused GroupNormalization op is unavailable" in l]
    assert len(warnings) == 1
    assert "no C++ compiler found" in warnings[0] and "composite" in warnings[0]
    assert "FUSED ERROR:" in result.stdout and "no C++ compiler found" in result.stdout


def test_prebuild_command():
    result = run_python("from keras_gn.fused.__main__ import main; raise SystemExit(main(['build']))", {})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fused op built and loaded" in result.stdout


def test_on_a_gpu_without_nvcc_the_layer_falls_back_with_one_log_line(tmp_path):
    # No GPU here: pretend TensorFlow sees one, so that load() asks for the CUDA build.
    result = run_python(
        """
        import numpy as np
        import keras_gn
        from keras_gn import fused, ops
        fused.gpu_visible = lambda: True
        ops._gpu_visible = lambda: True
        x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
        y = keras_gn.GroupNormalization(groups=2)(x)  # auto: composite until the op has run in TensorFlow on a GPU
        assert not fused._state["tried"]
        for _ in range(3):
            try:
                keras_gn.GroupNormalization(groups=2, implementation="fused")(x)
            except ValueError as error:
                print("FUSED ERROR:", error)
        """,
        {"KERAS_GN_NVCC": "/nonexistent/nvcc", "KERAS_GN_CACHE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [l for l in result.stderr.splitlines() if "fused GroupNormalization op is unavailable" in l]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert "on the GPU" in warnings[0] and "/nonexistent/nvcc" in warnings[0] and "composite" in warnings[0]
    assert result.stdout.count("FUSED ERROR:") == 3
