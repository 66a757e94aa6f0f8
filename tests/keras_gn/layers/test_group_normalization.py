"""Tests of keras_gn.GroupNormalization against the float64 reference, its
equivalences, mixed precision, numerical robustness, graph modes and errors."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import keras_gn
from tests import reference
from tests.layer_harness import check_layer

# Per-dtype tolerances on outputs of order 1 (|y| < ~10), against the float64
# reference evaluated on the same (already rounded) input: about two units in
# the last place of the output dtype at that magnitude.
TOLERANCES = {
    "float64": dict(rtol=1e-12, atol=1e-12),
    "float32": dict(rtol=1e-5, atol=2e-5),
    "mixed_float16": dict(rtol=2e-3, atol=4e-3),
    "mixed_bfloat16": dict(rtol=1.6e-2, atol=3e-2),
}


def _random_weights(layer, rng):
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape))
    gamma = layer.gamma.numpy() if layer.gamma is not None else None
    beta = layer.beta.numpy() if layer.beta is not None else None
    return gamma, beta


def _as_input(x, policy):
    """The input as the layer sees it: rounded to the compute dtype."""
    dtype = keras.DTypePolicy(policy).compute_dtype
    return np.asarray(tf.cast(tf.cast(x, dtype), tf.float64))


@pytest.mark.parametrize("policy", list(TOLERANCES))
@pytest.mark.parametrize(
    "shape, axis, groups",
    [
        ((2, 19, 64), -1, 32),  # 1-D signal
        ((2, 64, 19), 1, 2),  # 1-D, channels first
        ((2, 7, 9, 64), -1, 1),  # image, LayerNorm-like
        ((2, 7, 9, 64), -1, 32),
        ((2, 7, 9, 64), -1, 64),  # InstanceNorm-like
        ((2, 64, 7, 9), 1, 32),  # image, channels first
        ((2, 64, 7, 9), -3, 2),  # negative channels-first axis
        ((2, 3, 5, 6, 32), -1, 32),  # video (T, H, W, C)
        ((2, 32, 3, 5, 6), 1, 2),  # video, channels first
    ],
)
def test_matches_reference(policy, shape, axis, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=shape)
    layer = keras_gn.GroupNormalization(groups=groups, axis=axis, dtype=policy)
    layer.build(shape)
    gamma, beta = _random_weights(layer, rng)
    y = layer(x)
    assert y.dtype == keras.DTypePolicy(policy).compute_dtype
    expected = reference.group_norm(_as_input(x, policy), gamma, beta, groups=groups, axis=axis)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, **TOLERANCES[policy])


@pytest.mark.parametrize("center, scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_flags(center, scale):
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 8)).astype("float32")
    layer = keras_gn.GroupNormalization(groups=4, center=center, scale=scale)
    layer.build(x.shape)
    gamma, beta = _random_weights(layer, np.random.default_rng(2))
    assert len(layer.weights) == center + scale
    np.testing.assert_allclose(
        layer(x), reference.group_norm(x, gamma, beta, groups=4), rtol=1e-5, atol=2e-5
    )


def test_group_size_is_channels_per_group():
    x = np.random.default_rng(3).normal(size=(2, 5, 5, 48)).astype("float32")
    by_size = keras_gn.GroupNormalization(group_size=16)
    np.testing.assert_allclose(by_size(x), reference.group_norm(x, groups=3), rtol=1e-5, atol=2e-5)
    assert by_size.num_groups == 3
    assert by_size.get_config()["groups"] is None


def test_groups_1_is_layer_normalization():
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, size=(3, 6, 5, 16)).astype("float32")
    gamma, beta = rng.normal(size=16), rng.normal(size=16)
    gn = keras_gn.GroupNormalization(groups=1)
    gn.build(x.shape)
    gn.set_weights([gamma, beta])
    ln = keras.layers.LayerNormalization(axis=[1, 2, 3], epsilon=1e-5)
    ln.build(x.shape)
    # LayerNormalization's gamma/beta cover (H, W, C); per-channel ones broadcast.
    ln.set_weights([np.broadcast_to(gamma, (6, 5, 16)), np.broadcast_to(beta, (6, 5, 16))])
    np.testing.assert_allclose(gn(x), ln(x), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kwargs", [dict(groups=16), dict(group_size=1)])
def test_groups_c_is_instance_normalization(kwargs):
    rng = np.random.default_rng(5)
    x = rng.normal(-1.0, 3.0, size=(3, 6, 5, 16)).astype("float32")
    gamma, beta = rng.normal(size=16), rng.normal(size=16)
    gn = keras_gn.GroupNormalization(**kwargs)
    gn.build(x.shape)
    gn.set_weights([gamma, beta])
    # Instance Normalization: per sample and channel, over the spatial axes.
    mean, variance = tf.nn.moments(tf.constant(x), axes=[1, 2], keepdims=True)
    instance = (x - mean) * tf.math.rsqrt(variance + 1e-5) * gamma + beta
    np.testing.assert_allclose(gn(x), instance, rtol=1e-5, atol=2e-5)


def test_gradient_through_layer_matches_finite_differences():
    rng = np.random.default_rng(6)
    x = tf.constant(rng.normal(size=(2, 3, 4, 8)))
    layer = keras_gn.GroupNormalization(groups=4, dtype="float64")
    layer.build(x.shape)
    _random_weights(layer, rng)
    upstream = tf.constant(rng.normal(size=(2, 3, 4, 8)))
    analytic, numeric = tf.test.compute_gradient(
        lambda x: tf.reduce_sum(layer(x) * upstream), [x], delta=1e-4
    )
    np.testing.assert_allclose(analytic[0], numeric[0], rtol=1e-6, atol=1e-6)


def test_large_offset_keeps_accurate_statistics():
    # 1e4 + N(0, 1): a one-pass E[x^2] - E[x]^2 in float32 loses every digit of
    # the variance (ulp(1e8) = 8); the two-pass statistics keep the output to
    # the rounding of the float32 mean (ulp(1e4)/2 ~ 5e-4).
    x = (1e4 + np.random.default_rng(7).normal(size=(2, 8, 8, 32))).astype("float32")
    y = keras_gn.GroupNormalization(groups=8)(x)
    np.testing.assert_allclose(y, reference.group_norm(x, groups=8), rtol=0, atol=1e-3)


@pytest.mark.parametrize("policy", ["mixed_float16", "float16"])
def test_float16_near_max_gives_finite_accurate_output(policy):
    rng = np.random.default_rng(8)
    x16 = rng.uniform(60000.0, 65504.0, size=(2, 4, 4, 32)).astype("float16")
    y = keras_gn.GroupNormalization(groups=4, dtype=policy)(x16)
    assert y.dtype == "float16"
    assert np.all(np.isfinite(np.asarray(y, np.float32)))
    expected = reference.group_norm(x16, groups=4)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, **TOLERANCES["mixed_float16"])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policy(policy):
    keras.config.set_dtype_policy(policy)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(32, 3)(inputs)
    gn = keras_gn.GroupNormalization()
    outputs = keras.layers.Dense(2, dtype="float32")(gn(x))
    model = keras.Model(inputs, outputs)
    compute = keras.DTypePolicy(policy).compute_dtype
    assert gn.compute_dtype == compute
    assert gn.gamma.dtype == "float32" and gn.beta.dtype == "float32"
    model.compile(optimizer="sgd", loss="mse")
    data = np.random.default_rng(9).normal(size=(4, 8, 8, 3)).astype("float32")
    loss = model.train_on_batch(data, np.zeros((4, 6, 6, 2), "float32"))
    assert np.isfinite(loss)
    assert gn.gamma.dtype == "float32"
    probe = keras.Model(inputs, gn.output)
    assert probe(data).dtype == compute


def test_unknown_batch_and_spatial_sizes_in_tf_function_and_xla():
    inputs = keras.Input((None, None, 64))
    model = keras.Model(inputs, keras_gn.GroupNormalization()(inputs))
    layer = model.layers[-1]
    rng = np.random.default_rng(10)
    graph = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 64])])
    xla = tf.function(model, jit_compile=True)
    for shape in [(1, 5, 7, 64), (3, 9, 4, 64)]:
        x = rng.normal(size=shape).astype("float32")
        expected = reference.group_norm(x, groups=32)
        for fn in (model, graph, xla):
            np.testing.assert_allclose(fn(x), expected, rtol=1e-5, atol=2e-5)
    # Static shapes survive the grouped reshape in a traced graph.
    concrete = graph.get_concrete_function()
    assert concrete.outputs[0].shape.as_list() == [None, None, None, 64]
    assert layer.num_groups == 32


def test_fit_with_jit_compile():
    model = keras.Sequential(
        [keras.Input((6, 6, 8)), keras.layers.Conv2D(16, 3), keras_gn.GroupNormalization(groups=4),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    history = model.fit(np.ones((4, 6, 6, 8)), np.zeros((4, 2)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "kwargs, input_shape",
    [
        (dict(groups=32), (2, 5, 5, 64)),
        (dict(group_size=4, axis=1), (2, 8, 5, 5)),
        (dict(groups=2, center=False, epsilon=1e-3, gamma_regularizer="l2"), (2, 5, 6)),
    ],
)
def test_layer_harness(kwargs, input_shape):
    num_weights = 1 if kwargs.get("center") is False else 2
    check_layer(keras_gn.GroupNormalization, kwargs, input_shape, num_weights)


def test_config_is_the_same_before_and_after_build_and_lists_every_argument():
    layer = keras_gn.GroupNormalization(groups=8, axis=1, epsilon=1e-3, center=False)
    config = layer.get_config()
    layer.build((2, 16, 4, 4))
    assert layer.get_config() == config
    assert {"groups", "group_size", "axis", "epsilon", "center", "scale", "beta_initializer",
            "gamma_initializer", "beta_regularizer", "gamma_regularizer", "beta_constraint",
            "gamma_constraint"} <= set(config)
    assert config["axis"] == 1 and config["groups"] == 8


def test_defaults():
    layer = keras_gn.GroupNormalization()
    assert (layer.groups, layer.group_size, layer.axis, layer.epsilon) == (32, None, -1, 1e-5)


@pytest.mark.parametrize(
    "kwargs, input_shape, message",
    [
        (dict(groups=5), (2, 4, 4, 64), r"64 input channels cannot be split into groups=5 .*\[1, 2, 4, 8, 16, 32, 64\]"),
        (dict(groups=32), (2, 4, 4, 16), r"groups=32 is more than the 16 input channels.*\[1, 2, 4, 8, 16\]"),
        (dict(group_size=3), (2, 4, 4, 16), r"group_size=3 does not divide the 16 input channels"),
        (dict(groups=4), (2, 4, 4, None), r"unknown size"),
        (dict(axis=4), (2, 4, 4, 16), r"axis=4 is not a channel axis of a rank-4 input.*Valid values: \[1, 2, 3, -3, -2, -1\]"),
        (dict(axis=-5), (2, 4, 4, 16), r"axis=-5"),
        (dict(axis=0), (2, 4, 4, 16), r"axis 0 is the batch"),
        (dict(), (16,), r"rank >= 2"),
    ],
)
def test_bad_configuration_fails_at_build_with_clear_message(kwargs, input_shape, message):
    layer = keras_gn.GroupNormalization(name="gn_under_test", **kwargs)
    with pytest.raises(ValueError, match=message) as error:
        layer.build(input_shape)
    assert error.match("gn_under_test")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(groups=32, group_size=16), "exactly one of"),
        (dict(groups=None), "exactly one of"),
        (dict(groups=0), "received groups=0"),
        (dict(groups=8.0), "positive integer"),
        (dict(group_size=0), "group_size=0"),
        (dict(axis=[1, 2]), r"single int .*axis=\[1, 2\]"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_gn.GroupNormalization(**kwargs)


def test_wrong_channel_count_after_build_is_rejected():
    layer = keras_gn.GroupNormalization(groups=4)
    layer(np.zeros((1, 3, 3, 8), "float32"))
    with pytest.raises(ValueError, match="expected axis -1 of input to have value 8|incompatible"):
        layer(np.zeros((1, 3, 3, 16), "float32"))
