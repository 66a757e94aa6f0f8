"""Tests of the resumable sweep runner and its report."""

import json
import os
import subprocess
import sys

import pytest

from train import experiments

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def sweep(tmp_path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "train.experiments", "run", "--fake_data", "--epochs=1", "--steps_per_epoch=2",
         "--per_replica_batch_sizes=4", "--norms=bn,gn", "--replicas=2",
         f"--results={tmp_path / 'sweep.jsonl'}", f"--runs_dir={tmp_path / 'runs'}", *extra],
        capture_output=True, text=True, env=ENV, timeout=900)


def test_sweep_appends_each_run_once_and_continues_where_it_stopped(tmp_path):
    first = sweep(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 runs in" in first.stdout and "2 to go" in first.stdout
    records = experiments.read_results(tmp_path / "sweep.jsonl")
    assert [r["run_id"] for r in records] == ["resnet20_bn_b4_e1_s0", "resnet20_gn_b4_e1_s0"]
    for r in records:
        assert (r["replicas"], r["global_batch_size"]) == (2, 8)
        # 0.1 * N / 32 with N images per replica.
        assert r["learning_rate"] == pytest.approx(0.1 * 4 / 32)
        assert 0 <= r["final_test_error"] <= 100
        assert r["weight_decay"] == experiments.WEIGHT_DECAY
    again = sweep(tmp_path)
    assert "2 runs in" in again.stdout and "0 to go" in again.stdout
    assert len(experiments.read_results(tmp_path / "sweep.jsonl")) == 2


def test_sweep_refuses_to_mix_runs_of_another_weight_decay(tmp_path):
    stale = dict(run_id="resnet20_bn_b4_e1_s0", norm="bn", per_replica_batch_size=4)  # no weight_decay
    (tmp_path / "sweep.jsonl").write_text(json.dumps(stale) + "\n")
    result = sweep(tmp_path)
    assert result.returncode != 0
    assert "another weight decay" in result.stderr and "resnet20_bn_b4_e1_s0" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_report_writes_csv_table_and_figure(tmp_path):
    pytest.importorskip("matplotlib")
    results = [dict(run_id=f"{n}{b}", norm=n, per_replica_batch_size=b, epochs=30, seed=0,
                    final_test_error=e, median_test_error_last5=e, wall_seconds=1.0, images_per_second=1.0,
                    learning_rate=0.1, global_batch_size=8 * b, replicas=8, dataset="folder:cifar10")
               for n, errors in (("bn", (8.0, 9.0, 20.0)), ("gn", (9.0, 9.1, 9.2)))
               for b, e in zip((32, 8, 2), errors)]
    experiments.report(results, tmp_path)
    table = (tmp_path / "batch_size_sweep.md").read_text()
    assert "epochs: 30; seeds: 0; replicas: 8; 6 runs" in table
    assert "| images per replica | 32 | 16 | 8 | 4 | 2 |" in table
    assert "| BN (this sweep) | 8.0 | - | 9.0 | - | 20.0 |" in table
    assert "| GN (paper, ImageNet) | 24.1 | 24.2 | 24.0 | 24.2 | 24.1 |" in table
    assert len((tmp_path / "batch_size_sweep.csv").read_text().splitlines()) == 7
    assert (tmp_path / "batch_size_sweep.png").read_bytes()[:4] == b"\x89PNG"
