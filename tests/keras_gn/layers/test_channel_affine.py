"""Tests of keras_gn.ChannelAffine."""

import numpy as np
import pytest

import keras_gn
from tests.layer_harness import check_layer


@pytest.mark.parametrize("input_shape", [(2, 4, 5, 6), (3, 7)])
def test_layer_harness(input_shape):
    check_layer(keras_gn.ChannelAffine, dict(axis=-1), input_shape, 2)


@pytest.mark.parametrize("axis, input_shape", [(-1, (2, 4, 5, 6)), (1, (2, 6, 4)), (-1, (3, 7))])
def test_per_channel_scale_and_offset(axis, input_shape):
    layer = keras_gn.ChannelAffine(axis=axis)
    x = np.random.default_rng(0).normal(size=input_shape).astype("float32")
    layer.build(input_shape)
    channels = input_shape[axis]
    scale, offset = np.arange(1, channels + 1, dtype="float32"), np.full(channels, 0.5, "float32")
    layer.set_weights([scale, offset])
    shape = [1] * len(input_shape)
    shape[axis] = channels
    np.testing.assert_allclose(layer(x), x * scale.reshape(shape) + offset.reshape(shape), rtol=1e-6)


def test_float16_inputs_are_computed_in_float32():
    layer = keras_gn.ChannelAffine(dtype="mixed_float16")
    x = np.full((1, 2, 3), 60000.0, "float16")
    layer.build(x.shape)
    layer.set_weights([np.full(3, 2.0), np.full(3, -60000.0)])
    y = layer(x)
    assert y.dtype == "float16"
    np.testing.assert_array_equal(np.asarray(y, np.float32), 60000.0)


@pytest.mark.parametrize("kwargs, shape, message", [
    (dict(axis=3), (2, 4, 4), r"axis=3 is out of range for a rank-3 input"),
    (dict(axis=-1), (2, 4, None), "known channel dimension"),
])
def test_bad_configuration(kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        keras_gn.ChannelAffine(**kwargs).build(shape)


def test_axis_must_be_an_int():
    with pytest.raises(ValueError, match=r"single int; received axis=\(1, 2\)"):
        keras_gn.ChannelAffine(axis=(1, 2))
