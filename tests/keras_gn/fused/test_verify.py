"""keras_gn.fused.verify and `python -m keras_gn.fused verify`: the check
passes the real op and catches a wrong one; a passing GPU record, and only
one for this library and these GPU models, lets implementation="auto" use
the op on a GPU. No GPU here: the GPU side is simulated (device names, the
loaded library's state)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_gn import fused
from keras_gn import ops
from keras_gn.fused import __main__ as cli
from keras_gn.fused import verify

pytestmark = pytest.mark.skipif(
    fused.load() is None, reason=f"fused op unavailable: {fused.unavailable_reason()}"
)


def test_the_op_passes_on_the_cpu():
    report = verify.run(fused.load(), "/CPU:0", quick=True)
    assert report["passed"], report["failures"]
    assert report["cases"] == len(verify.CASES[::3]) * len(verify.DTYPES)
    assert report["devices"] and all("CPU" in d for d in report["devices"])


class _Skewed:
    """The real op with y off by 1% (forward) or dx off by 1% (backward)."""

    def __init__(self, which):
        self.module, self.which = fused.load(), which

    def keras_gn_group_norm(self, *args, **kwargs):
        y, mean, rstd = self.module.keras_gn_group_norm(*args, **kwargs)
        return (y * tf.cast(1.01, y.dtype) if self.which == "y" else y), mean, rstd

    def keras_gn_group_norm_grad(self, *args, **kwargs):
        dx, dgamma, dbeta = self.module.keras_gn_group_norm_grad(*args, **kwargs)
        return (dx * tf.cast(1.01, dx.dtype) if self.which == "dx" else dx), dgamma, dbeta


@pytest.mark.parametrize("which", ["y", "dx"])
def test_a_wrong_op_fails(which):
    report = verify.run(_Skewed(which), "/CPU:0", quick=True)
    assert not report["passed"]
    # float32 cases fail; bfloat16 tolerances are wider than 1% by design
    assert {f["dtype"] for f in report["failures"]} >= {"float32"}


def test_records_are_honoured_only_for_their_library_and_devices(tmp_path):
    library = tmp_path / "keras_gn_group_norm_op-cuda-abc.so"
    assert not verify.is_verified(library, ["H200"])
    verify.write_record(library, ["NVIDIA H200"], {"passed": True, "cases": 90})
    assert verify.is_verified(library, ["NVIDIA H200"])
    assert verify.is_verified(library, ["NVIDIA H200", "NVIDIA H200"])
    assert not verify.is_verified(library, ["NVIDIA H200", "NVIDIA A100"])
    assert not verify.is_verified(tmp_path / "keras_gn_group_norm_op-cuda-other.so", ["NVIDIA H200"])
    other = tmp_path / "other.so"
    verify.record_path(other).write_text(json.dumps({"library": "other.so", "devices": ["NVIDIA H200"],
                                                     "passed": False}))
    assert not verify.is_verified(other, ["NVIDIA H200"])
    verify.record_path(other).write_text("{not json")
    assert not verify.is_verified(other, ["NVIDIA H200"])


@pytest.fixture
def simulated_gpu(monkeypatch, tmp_path):
    """A visible 'GPU' and the loaded library posing as a CUDA build in a
    temporary cache; returns that library's path."""
    monkeypatch.setenv("KERAS_GN_CACHE_DIR", str(tmp_path))
    (tmp_path / "ops").mkdir()
    library = tmp_path / "ops" / "keras_gn_group_norm_op-cuda-test.so"
    monkeypatch.setattr(ops, "_gpu_visible", lambda: True)
    monkeypatch.setattr(verify, "gpu_names", lambda: ["Simulated GPU"])
    fused.load()
    monkeypatch.setitem(fused._state, "cuda", True)
    monkeypatch.setitem(fused._state, "path", library)
    monkeypatch.delitem(fused._state, "gpu_verified", raising=False)
    yield library
    fused._state.pop("gpu_verified", None)


def test_auto_stays_composite_on_a_gpu_without_a_record(simulated_gpu):
    x = tf.zeros((2, 4, 4, 8))
    assert not fused.gpu_op_verified()
    assert ops.resolve_implementation("auto", x, -1) == "composite"
    assert ops.resolve_implementation("fused", x, -1) == "fused"


def test_auto_uses_the_op_on_a_gpu_with_a_passing_record(simulated_gpu):
    verify.write_record(simulated_gpu, ["Simulated GPU"], {"passed": True, "cases": 90})
    assert verify.recorded_devices() == {"Simulated GPU"}
    assert fused.gpu_op_verified()
    assert ops.resolve_implementation("auto", tf.zeros((2, 4, 4, 8)), -1) == "fused"


def test_a_record_for_another_gpu_model_is_not_enough(simulated_gpu):
    verify.write_record(simulated_gpu, ["Another GPU"], {"passed": True, "cases": 90})
    assert not fused.gpu_op_verified()


def test_cli_on_the_cpu_checks_and_records_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_GN_CACHE_DIR", str(tmp_path))
    assert cli.main(["verify", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "12/12 cases within tolerance" in out and "nothing recorded" in out
    assert not list(tmp_path.rglob("*.verified.json"))


def test_cli_records_a_passing_simulated_gpu(capsys, simulated_gpu, monkeypatch):
    # The op runs on the CPU here; pretend its device is the GPU to reach the recording.
    real_run = verify.run

    def run_on_gpu(module, device, quick=False):
        report = real_run(module, "/CPU:0", quick=quick)
        return {**report, "devices": ["/job:localhost/replica:0/task:0/device:GPU:0"]}

    monkeypatch.setattr(verify, "run", run_on_gpu)
    assert cli.main(["verify", "--quick"]) == 0
    assert "now uses the fused op on Simulated GPU" in capsys.readouterr().out
    assert verify.is_verified(simulated_gpu, ["Simulated GPU"])


def test_cli_does_not_record_when_the_op_ran_elsewhere(capsys, simulated_gpu):
    assert cli.main(["verify", "--quick"]) == 1  # "/GPU:0" falls back to the CPU here
    assert "did not run on the GPU" in capsys.readouterr().out
    assert not verify.record_path(simulated_gpu).exists()
    np.testing.assert_equal(fused.gpu_op_verified(), False)
