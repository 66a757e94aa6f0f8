"""Tests of keras_gn.WeightStandardizedConv2D against the float64 reference."""

import numpy as np
import pytest
import keras

import keras_gn
from keras_gn.layers import standardize_kernel
from tests import reference
from tests.layer_harness import check_layer


def _random_kernel(shape, seed=0, scale=0.05, offset=0.0):
    return np.random.default_rng(seed).normal(offset, scale, size=shape).astype("float32")


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (1, 1, 16, 4), (5, 3, 2, 6), (3, 3, 64, 64)])
@pytest.mark.parametrize("scale, offset", [(0.05, 0.0), (3.0, 0.0), (1e-3, 0.02)])
def test_standardize_kernel_matches_reference(shape, scale, offset):
    # Tolerance: float32 statistics of at most 9 * 64 values, relative 1e-5.
    kernel = _random_kernel(shape, scale=scale, offset=offset)
    got = standardize_kernel(keras.ops.convert_to_tensor(kernel))
    assert got.dtype == "float32"
    np.testing.assert_allclose(got, reference.standardize_kernel(kernel), rtol=1e-5, atol=1e-5)


def test_standardized_filters_have_zero_mean_and_unit_variance():
    # Properties, not the reference. The filters sit at 0.3 +- 0.05: float32
    # rounding of 0.3 (3e-8), over the spread 0.05, times sqrt(72) terms,
    # leaves means of a few 1e-6. The variance is v / (v + 1e-10) with
    # v = 0.05^2: 1 within 1e-5.
    kernel = np.asarray(standardize_kernel(keras.ops.convert_to_tensor(
        _random_kernel((3, 3, 8, 5), offset=0.3))), np.float64)
    np.testing.assert_allclose(kernel.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(kernel.var(axis=(0, 1, 2)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_kernels_are_standardized_in_float32(dtype):
    # A kernel whose squared deviations overflow float16 (300^2 * 36 > 65504
    # summed): standardized in float32, then returned in the kernel's dtype.
    kernel = _random_kernel((3, 3, 4, 2), scale=300.0)
    got = standardize_kernel(keras.ops.cast(kernel, dtype))
    assert got.dtype == dtype
    half = np.asarray(keras.ops.cast(keras.ops.cast(kernel, dtype), "float32"))
    np.testing.assert_allclose(np.asarray(keras.ops.cast(got, "float32")),
                               reference.standardize_kernel(half), rtol=0, atol=2e-2)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("kernel_size, in_channels, filters", [(3, 4, 8), (1, 6, 3), (3, 16, 16)])
def test_layer_convolves_with_the_standardized_kernel(padding, kernel_size, in_channels, filters):
    x = np.random.default_rng(1).normal(size=(2, 7, 6, in_channels)).astype("float32")
    layer = keras_gn.WeightStandardizedConv2D(filters, kernel_size, padding=padding, use_bias=False)
    layer.build(x.shape)
    kernel = _random_kernel(layer.kernel.shape, seed=2, offset=0.01)
    layer.kernel.assign(kernel)
    expected = reference.conv2d(x, reference.standardize_kernel(kernel), padding)
    # float32 convolution of up to 144 unit-variance products: atol 1e-4.
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_output_does_not_depend_on_the_kernel_scale_or_offset():
    x = np.random.default_rng(3).normal(size=(1, 5, 5, 3)).astype("float32")
    layer = keras_gn.WeightStandardizedConv2D(4, 3)
    layer.build(x.shape)
    kernel = _random_kernel(layer.kernel.shape)
    layer.kernel.assign(kernel)
    y = np.asarray(layer(x))
    layer.kernel.assign(7.0 * kernel + 0.5)
    np.testing.assert_allclose(layer(x), y, rtol=1e-4, atol=1e-4)


def test_channels_first_matches_channels_last():
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 4)).astype("float32")
    last = keras_gn.WeightStandardizedConv2D(5, 3, data_format="channels_last")
    first = keras_gn.WeightStandardizedConv2D(5, 3, data_format="channels_first")
    last.build(x.shape)
    first.build((2, 4, 6, 6))
    first.kernel.assign(last.kernel)
    try:
        y_first = first(np.transpose(x, (0, 3, 1, 2)))
    except Exception as error:  # TF's CPU kernels have no NCHW convolution
        pytest.skip(f"channels_first convolution is not available here: {error}")
    np.testing.assert_allclose(np.transpose(y_first, (0, 2, 3, 1)), last(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_shape", [(2, 6, 5, 4), (1, 3, 3, 8)])
def test_layer_harness(input_shape):
    channels = input_shape[-1]
    check_layer(keras_gn.WeightStandardizedConv2D,
                dict(filters=channels, kernel_size=3, padding="same",
                     kernel_initializer=keras.initializers.HeNormal(seed=1)), input_shape, 2)


def test_saved_model_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras_gn.WeightStandardizedConv2D(4, 3, padding="same", standardization_epsilon=1e-6)(inputs)
    model = keras.Model(inputs, keras_gn.GroupNormalization(groups=2)(x))
    path = tmp_path / "ws.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.layers[1], keras_gn.WeightStandardizedConv2D)
    assert restored.layers[1].standardization_epsilon == 1e-6
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(restored(x), model(x), rtol=1e-6, atol=1e-6)


def test_takes_conv2d_arguments_in_conv2d_order():
    layer = keras_gn.WeightStandardizedConv2D(4, 3, 2, "same", use_bias=False)
    assert (layer.filters, layer.kernel_size, layer.strides, layer.padding) == (4, (3, 3), (2, 2), "same")
    assert layer.standardization_epsilon == 1e-10 and not layer.use_bias


@pytest.mark.parametrize("epsilon", [0, -1e-5, "1e-5", True])
def test_bad_epsilon_names_the_value(epsilon):
    with pytest.raises(ValueError, match=r"standardization_epsilon must be a positive float; "
                                         rf"received standardization_epsilon={epsilon!r}"):
        keras_gn.WeightStandardizedConv2D(4, 3, standardization_epsilon=epsilon)
