"""`train.publish.evaluate`, the score a run must reproduce before it is
shipped (the fast part of test_publish.py, which trains runs)."""

import keras
import numpy as np
import tensorflow as tf

from train import publish as publish_lib


def test_evaluate_scores_logits_as_training_did_even_when_saturated():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (300, 10)).astype("float32")
    logits[:50] *= 60  # leads of hundreds: their probabilities underflow in float32
    labels = rng.integers(0, 10, 300)
    dataset = tf.data.Dataset.from_tensor_slices((logits, labels)).batch(64)
    identity = keras.Sequential([keras.Input((10,)), keras.layers.Identity()])

    top1, loss = publish_lib.evaluate(identity, dataset, len(labels))

    assert top1 == np.mean(np.argmax(logits, -1) == labels)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    np.testing.assert_allclose(loss, float(expected), rtol=1e-5)
    assert loss > 87 * 50 / 300  # more than probabilities clipped at float32's tiny could give
