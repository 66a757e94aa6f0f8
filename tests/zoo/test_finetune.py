"""Tests of the fine-tuning helpers and of the runnable example."""

import os
import socket
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import keras

import zoo
from zoo import finetune

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_weight_decay_skips_gamma_and_beta():
    backbone = zoo.resnet20_gn(include_top=False, pooling="avg")
    model = finetune.with_new_head(backbone, 3)
    optimizer = finetune.sgd(learning_rate=1.0, weight_decay=0.1, momentum=0.0)
    optimizer.build(model.trainable_variables)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    # Zero gradients: only weight decay moves the variables.
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        moved = not np.allclose(before[v.path], v.numpy())
        is_norm = v.path.endswith(("gamma", "beta"))
        if np.any(before[v.path]):
            assert moved != is_norm, v.path


def test_frozen_backbone_trains_only_the_head():
    backbone = zoo.resnet20_gn(include_top=False, pooling="avg")
    model = finetune.with_new_head(backbone, 4, dropout=0.1)
    backbone.trainable = False
    assert [v.path for v in model.trainable_variables] == ["head/kernel", "head/bias"]
    assert model.non_trainable_variables  # frozen, and GN has no moving statistics:
    assert not [v for v in backbone.variables if "moving" in v.path]
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(backbone(x, training=True), backbone(x, training=False), rtol=1e-6)


def test_unpooled_backbone_is_rejected():
    with pytest.raises(ValueError, match="must output pooled features"):
        finetune.with_new_head(zoo.resnet20_gn(include_top=False), 4)


@pytest.mark.slow
def test_example_runs_on_real_cifar10(tmp_path):
    data = os.environ.get("KERAS_GN_CIFAR10")
    if not data or not os.path.exists(data):
        pytest.skip("set KERAS_GN_CIFAR10 to cifar10-jpeg.tar.gz to run on real CIFAR-10")
    pretrained = zoo.resnet20_gn()
    pretrained.save_weights(tmp_path / "pretrained.weights.h5")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "finetune.py"), "--arch=resnet20_gn",
         f"--weights={tmp_path / 'pretrained.weights.h5'}", f"--data={data}", "--image_size=32",
         "--batch_size=16", "--steps_per_epoch=3"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Found 50000 files belonging to 10 classes" in result.stdout
    assert "test accuracy:" in result.stdout


@pytest.mark.slow
def test_example_resolves_the_weights_before_touching_the_data(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_GN_WEIGHTS_MIRROR": f"http://127.0.0.1:{port}",
           "KERAS_GN_WEIGHTS_DIR": str(tmp_path / "weights"), "KERAS_GN_CACHE_DIR": str(tmp_path / "cache")}
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"not read")
    result = subprocess.run(  # from the repository root, as the README writes it
        [sys.executable, "examples/finetune.py", "--arch=resnet50_gn", "--weights=imagenet", f"--data={archive}",
         "--image_size=64"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode != 0
    assert "Could not get the weight file" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "cache" / "data").exists()
