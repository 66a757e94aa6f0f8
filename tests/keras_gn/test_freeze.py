"""Tests of keras_gn.freeze_bn: BN* outputs equal BN in inference mode."""

import numpy as np
import pytest
import keras

import keras_gn
from keras_gn.layers.channel_affine import ChannelAffine
from tests.keras_gn.test_convert import all_layers, count, randomize_bn


@pytest.mark.parametrize("name, size", [("ResNet50", 32), ("MobileNetV2", 32), ("InceptionV3", 75)])
def test_frozen_model_matches_bn_inference(name, size):
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    randomize_bn(model)  # nontrivial moving statistics, gamma and beta
    frozen = keras_gn.freeze_bn(model)
    assert count(frozen, keras.layers.BatchNormalization) == 0
    assert count(frozen, keras_gn.ChannelAffine) == count(model, keras.layers.BatchNormalization)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = model(x, training=False)
    np.testing.assert_allclose(frozen(x, training=False), expected, rtol=1e-4, atol=1e-4)
    # Frozen statistics: training mode gives the same result.
    np.testing.assert_allclose(frozen(x, training=True), expected, rtol=1e-4, atol=1e-4)


def test_affine_is_frozen_unless_asked_and_other_weights_are_copied():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(center=False, epsilon=1e-2, name="bn")(x)
    model = keras.Model(inputs, x)
    randomize_bn(model)
    frozen = keras_gn.freeze_bn(model)
    trainable = keras_gn.freeze_bn(model, trainable=True)
    assert frozen.get_layer("bn").trainable_weights == []
    assert len(trainable.get_layer("bn").trainable_weights) == 2
    bn = model.get_layer("bn")
    expected_scale = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + 1e-2)
    np.testing.assert_allclose(frozen.get_layer("bn").scale, expected_scale, rtol=1e-6)
    np.testing.assert_allclose(frozen.get_layer("bn").offset, -bn.moving_mean.numpy() * expected_scale, rtol=1e-5)
    np.testing.assert_array_equal(frozen.get_layer("conv").kernel, model.get_layer("conv").kernel)


def test_subclassed_model_and_custom_layers_are_frozen_in_a_copy():
    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(4)
            self.norms = [keras.layers.BatchNormalization()]

        def call(self, x, training=None):
            return self.norms[0](self.dense(x), training=training)

    model = Net()
    x = np.random.default_rng(0).normal(size=(3, 2)).astype("float32")
    model(x)
    bn = model.norms[0]
    bn.moving_mean.assign([0.5, -1.0, 2.0, 0.0])
    bn.moving_variance.assign([4.0, 0.25, 1.0, 9.0])
    frozen = keras_gn.freeze_bn(model)
    assert isinstance(frozen.norms[0], ChannelAffine) and isinstance(model.norms[0], keras.layers.BatchNormalization)
    # The frozen copy computes the BN's inference output, in training mode too.
    np.testing.assert_allclose(frozen(x, training=True), model(x, training=False), rtol=1e-5, atol=1e-6)


def test_masks_still_flow_through_frozen_bn():
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))  # averages unmasked steps
    randomize_bn(model)
    frozen = keras_gn.freeze_bn(model)
    tokens = np.array([[3, 4, 0, 0, 0, 0], [1, 2, 3, 4, 5, 0]])
    np.testing.assert_allclose(frozen(tokens), model(tokens, training=False), rtol=1e-5, atol=1e-6)
