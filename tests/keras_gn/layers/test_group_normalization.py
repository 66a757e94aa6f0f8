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


# ------------------------------------------------------- mixed precision


@pytest.mark.parametrize("implementation", ["fused", "composite"])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("input_dtype, magnitude", [("float32", 7e4), ("float32", 1e6), ("float16", 6e4),
                                                    ("bfloat16", 6e4), ("float32", 1.0)])
def test_mixed_precision_statistics_are_float32_whatever_the_input(implementation, policy, input_dtype,
                                                                   magnitude):
    # Under the global policy, as users set it. A float32 input beyond
    # float16's range (65504) must not be cast to float16 before the
    # statistics (it would become inf, and the output NaN).
    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(20)
    values = magnitude * (1.0 + 0.05 * rng.normal(size=(2, 6, 6, 16)))
    x = tf.constant(np.minimum(values, 65504.0) if input_dtype == "float16" else values, input_dtype)
    layer = keras_gn.GroupNormalization(groups=4, implementation=implementation)
    layer.build(x.shape)
    gamma, beta = _random_weights(layer, rng)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    compute = keras.DTypePolicy(policy).compute_dtype
    assert y.dtype == compute
    assert all(np.all(np.isfinite(np.asarray(tf.cast(t, tf.float32)))) for t in [y, *grads])
    expected = reference.group_norm(np.asarray(tf.cast(x, tf.float64)), gamma, beta, groups=4)
    # The fused op writes its output in the input's dtype before the cast to
    # the compute dtype: the coarser of the two sets the tolerance.
    coarser = "mixed_bfloat16" if "bfloat16" in (input_dtype, compute) else policy
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float64)), expected, **TOLERANCES[coarser])


def test_the_float16_maximum_is_a_finite_input_with_finite_gradients():
    x = tf.constant(np.full((1, 4, 4, 8), 65504.0, "float16") * np.where(np.arange(8) % 2, 1, -1).astype("float16"))
    layer = keras_gn.GroupNormalization(groups=2, dtype="mixed_float16")
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    dx = tape.gradient(y, x)
    assert np.all(np.isfinite(np.asarray(y, np.float32))) and np.all(np.isfinite(np.asarray(dx, np.float32)))
    np.testing.assert_allclose(np.asarray(y, np.float64), reference.group_norm(x, groups=2), atol=4e-3)


# ------------------------------------------------------------------ masks


def test_an_embedding_mask_is_honoured_and_passed_on():
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(20, 16, mask_zero=True)(inputs)
    normalized = keras_gn.GroupNormalization(groups=4, name="gn")(embedded)
    pooled = keras.layers.GlobalAveragePooling1D()(normalized)  # a masked mean
    model = keras.Model(inputs, [normalized, pooled])
    assert normalized._keras_mask is not None

    tokens = np.array([[5, 3, 8, 1, 9, 2]])
    padded = np.array([[5, 3, 8, 1, 9, 2, 0, 0, 0], [7, 4, 0, 0, 0, 0, 0, 0, 0]])
    y_tokens, pooled_tokens = model(tokens)
    y_padded, pooled_padded = model(padded)
    np.testing.assert_allclose(y_padded[:1, :6], y_tokens, rtol=1e-5, atol=1e-5)
    # The next layer got the mask: the padding does not enter its mean.
    np.testing.assert_allclose(pooled_padded[:1], pooled_tokens, rtol=1e-5, atol=1e-5)
    mask = model.get_layer("gn").compute_mask(None, tf.constant(padded != 0))
    np.testing.assert_array_equal(mask, padded != 0)


@pytest.mark.parametrize("implementation", ["auto", "fused", "composite"])
def test_a_masking_layer_mask_restricts_the_statistics(implementation):
    rng = np.random.default_rng(21)
    x = rng.normal(2.0, 3.0, size=(3, 7, 8)).astype("float32")
    x[1, 4:] = 0.0
    x[2, 1:] = 0.0
    model = keras.Sequential([keras.Input((7, 8)), keras.layers.Masking(0.0),
                              keras_gn.GroupNormalization(groups=2, implementation=implementation)])
    mask = np.any(x != 0.0, axis=-1)
    np.testing.assert_allclose(model(x), reference.group_norm(x, groups=2, mask=mask), rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------- epsilon


@pytest.mark.parametrize("epsilon", [-1e-3, float("inf"), "1e-5", None])
def test_a_bad_epsilon_is_rejected_at_construction(epsilon):
    with pytest.raises(ValueError, match=r"Layer 'gn': epsilon=.* must be a finite number >= 0"):
        keras_gn.GroupNormalization(epsilon=epsilon, name="gn")


def test_epsilon_zero_divides_by_the_exact_standard_deviation():
    x = np.random.default_rng(22).normal(size=(2, 4, 4, 8)).astype("float32")
    y = keras_gn.GroupNormalization(groups=2, epsilon=0)(x)
    np.testing.assert_allclose(y, reference.group_norm(x, groups=2, epsilon=0.0), rtol=1e-5, atol=2e-5)
