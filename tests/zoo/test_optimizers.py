"""`zoo.optimizers.SGD`: the papers' L2 weight decay, through the momentum,
checked step by step against a NumPy reference of Caffe's SGD."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from zoo import optimizers


def caffe_sgd(w, gradients, rates, momentum, weight_decay):
    """v <- momentum v + lr (g + wd w); w <- w - v, in float64."""
    w, v = w.astype("float64"), np.zeros(w.shape)
    for g, lr in zip(gradients, rates):
        v = momentum * v + lr * (g + weight_decay * w)
        w = w - v
    return w


class Rates(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate that changes every step, as at a schedule's drops."""

    def __init__(self, rates):
        self.rates = rates

    def __call__(self, step):
        return keras.ops.take(keras.ops.convert_to_tensor(self.rates, "float32"), keras.ops.cast(step, "int32"))


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 1e-2), (0.9, 0.0), (0.0, 1e-1), (0.5, 3e-2)])
def test_matches_caffe_sgd(momentum, weight_decay):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 5)).astype("float32")
    gradients = rng.normal(size=(6, 3, 5)).astype("float32")
    rates = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]
    w = keras.Variable(w0, name="kernel")
    sgd = optimizers.SGD(Rates(rates), momentum=momentum, weight_decay=weight_decay or None)
    for g in gradients:
        sgd.apply_gradients([(g, w)])
    np.testing.assert_allclose(w.numpy(), caffe_sgd(w0, gradients, rates, momentum, weight_decay),
                               rtol=1e-5, atol=1e-6)


def test_decays_about_ten_times_more_than_keras_decoupled_decay_with_momentum():
    """Why this optimizer exists: the same 1e-4 is a 10x weaker decay in Keras."""
    ours, theirs = keras.Variable(np.ones(4, "float32")), keras.Variable(np.ones(4, "float32"))
    coupled = optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3)
    decoupled = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(200):  # zero gradients: only the decay moves the weights
        coupled.apply_gradients([(np.zeros(4, "float32"), ours)])
        decoupled.apply_gradients([(np.zeros(4, "float32"), theirs)])
    ratio = np.log(ours.numpy()[0]) / np.log(theirs.numpy()[0])
    assert 8 < ratio < 10.5, ratio
    np.testing.assert_allclose(ours.numpy(), caffe_sgd(np.ones(4), np.zeros((200, 4)), [0.1] * 200, 0.9, 1e-3),
                               rtol=1e-5)


def test_excluded_variables_get_no_decay():
    gamma, kernel = keras.Variable(np.ones(3, "float32"), name="gamma"), keras.Variable(np.ones(3, "float32"),
                                                                                         name="kernel")
    sgd = optimizers.sgd(1.0, weight_decay=0.1, momentum=0.0, decay_norm_parameters=False)
    sgd.apply_gradients([(np.zeros(3, "float32"), gamma), (np.zeros(3, "float32"), kernel)])
    np.testing.assert_allclose(gamma.numpy(), 1.0)
    np.testing.assert_allclose(kernel.numpy(), 0.9, rtol=1e-6)
    assert optimizers.sgd(1.0, weight_decay=0.0).weight_decay is None


def test_serializes_as_itself():
    sgd = optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(sgd))
    assert type(restored) is optimizers.SGD
    assert (restored.momentum, restored.weight_decay) == (0.9, 5e-4)


REPLICAS = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from zoo import optimizers

    def train(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            model.compile(optimizers.SGD(0.5, momentum=0.9, weight_decay=0.2), "mse")
        x = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
        model.fit(x, x[:, :2] * 2, batch_size=4, epochs=3, shuffle=False, verbose=0)
        return model.get_weights()

    single = train(tf.distribute.get_strategy())
    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("SAME")
""")


def test_decay_does_not_grow_with_the_number_of_replicas():
    """Added after the cross-replica sum: 2 replicas train like 1 device."""
    result = subprocess.run([sys.executable, "-c", REPLICAS], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]
