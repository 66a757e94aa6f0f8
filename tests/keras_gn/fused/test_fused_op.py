"""Tests of the fused C++ op (keras_gn.fused): forward against the float64
reference, agreement with the composite recipe, gradients against finite
differences and float64 autodiff, fused activations, thread independence,
bad inputs, and how the layer chooses it."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import keras
import tensorflow as tf

import keras_gn
from keras_gn import fused
from keras_gn import ops
from keras_gn.fused import verify
from tests import reference

pytestmark = pytest.mark.skipif(
    fused.load() is None, reason=f"fused op unavailable: {fused.unavailable_reason()}"
)

# Fused vs float64 reference on outputs of order 1, per input dtype: the
# float32 kernel to 1e-5 relative; half precision to about two output ulps
# (the tolerances `python -m keras_gn.fused verify` applies on a GPU).
TOLERANCES = {
    getattr(tf, dtype): dict(rtol=limits["y"][0], atol=limits["y"][1])
    for dtype, limits in verify.TOLERANCES.items()
}
ACTIVATIONS = {None: lambda y: y, "relu": lambda y: np.maximum(y, 0), "silu": lambda y: y / (1 + np.exp(-y))}
SHAPES = [
    ((2, 19, 32), -1, 8),  # 1-D signal
    ((2, 32, 19), 1, 4),
    ((3, 7, 9, 64), -1, 32),  # image
    ((3, 64, 7, 9), 1, 32),
    ((2, 5, 6, 48), -1, 1),  # LayerNorm-like
    ((2, 16, 5, 6), 1, 16),  # InstanceNorm-like
    ((2, 3, 4, 5, 32), -1, 4),  # video
    ((2, 32, 3, 4, 5), 1, 8),
    # Channels-last by row blocks (fewer samples than units wanted): blocks
    # of 2048, 2048 and 4 rows.
    ((2, 4100, 64), -1, 8),
]
ROW_BLOCK_SHAPE = SHAPES[-1]


def fused_gn(x, gamma, beta, groups, axis, activation=None):
    return ops.group_norm(x, gamma, beta, groups=groups, axis=axis, activation=activation,
                          implementation="fused")


def random_inputs(shape, axis, dtype=tf.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.cast(rng.normal(1.0, 2.0, size=shape), dtype)
    channels = shape[axis]
    gamma = tf.constant(rng.normal(size=channels), tf.float32)
    beta = tf.constant(rng.normal(size=channels), tf.float32)
    return x, gamma, beta


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=lambda d: d.name)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape, axis, groups", SHAPES)
def test_forward_matches_reference(shape, axis, groups, activation, dtype):
    x, gamma, beta = random_inputs(shape, axis, dtype)
    y = fused_gn(x, gamma, beta, groups, axis, activation)
    assert y.dtype == dtype and y.shape == shape
    x64 = np.asarray(tf.cast(x, tf.float64))
    expected = ACTIVATIONS[activation](reference.group_norm(x64, gamma, beta, groups=groups, axis=axis))
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float64)), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("shape, axis, groups", SHAPES[::2])
def test_fused_and_composite_agree_in_float32(shape, axis, groups):
    x, gamma, beta = random_inputs(shape, axis, seed=1)
    composite = ops.group_norm(x, gamma, beta, groups=groups, axis=axis)
    np.testing.assert_allclose(fused_gn(x, gamma, beta, groups, axis), composite, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape, axis, groups", [SHAPES[0], SHAPES[3], SHAPES[7], ROW_BLOCK_SHAPE])
def test_gradients_match_float64_autodiff(shape, axis, groups, activation):
    x, gamma, beta = random_inputs(shape, axis, seed=2)
    upstream = tf.constant(np.random.default_rng(3).normal(size=shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        loss = tf.reduce_sum(fused_gn(x, gamma, beta, groups, axis, activation) * upstream)
    grads = tape.gradient(loss, [x, gamma, beta])
    x64, g64, b64 = (tf.cast(t, tf.float64) for t in (x, gamma, beta))
    with tf.GradientTape() as tape:
        tape.watch([x64, g64, b64])
        y64 = ops.group_norm(x64, g64, b64, groups=groups, axis=axis, activation=activation)
        loss64 = tf.reduce_sum(y64 * tf.cast(upstream, tf.float64))
    expected = tape.gradient(loss64, [x64, g64, b64])
    for got, want in zip(grads, expected):
        scale = np.abs(want.numpy()).max()
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("axis", [-1, 1])
def test_gradients_match_finite_differences(axis, activation):
    shape = (2, 3, 4, 8) if axis == -1 else (2, 8, 3, 4)
    x, gamma, beta = random_inputs(shape, axis, seed=4)
    if activation == "relu":
        # Keep every pre-activation away from the kink, where differences are
        # meaningless: channels alternate between all-active and all-inactive.
        gamma = tf.constant(np.random.default_rng(6).uniform(0.2, 0.6, 8), tf.float32)
        beta = tf.constant([4.0, -4.0] * 4)
    upstream = tf.constant(np.random.default_rng(5).normal(size=shape), tf.float32)

    def loss(x, gamma, beta):
        return tf.reduce_sum(fused_gn(x, gamma, beta, 4, axis, activation) * upstream)

    # Central differences in float32 with delta 1e-2: truncation ~1e-4 and
    # rounding ~1e-5 / 1e-2; compared at 1e-2 of the gradient's scale.
    analytic, numeric = tf.test.compute_gradient(loss, [x, gamma, beta], delta=1e-2)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=0, atol=1e-2 * max(1.0, np.abs(n).max()))


@pytest.mark.parametrize("axis", [-1, 1])
def test_bfloat16_output_is_the_float32_result_rounded_as_tensorflow_rounds(axis):
    # The bfloat16 kernel converts by bit arithmetic (to vectorize); its
    # output must be the float32 computation rounded to nearest even, as
    # tf.cast rounds. The float32 op on the same values computes the same
    # float32 numbers up to summation order, so at most 1 ulp apart and
    # almost all bit for bit.
    shape = (2, 64, 5, 7) if axis == 1 else (2, 5, 7, 64)
    x, gamma, beta = random_inputs(shape, axis, tf.bfloat16, seed=3)
    y16 = fused_gn(x, gamma, beta, 8, axis)
    y32 = tf.cast(fused_gn(tf.cast(x, tf.float32), gamma, beta, 8, axis), tf.bfloat16)
    bits16 = tf.bitcast(y16, tf.int16).numpy().astype(np.int32)
    bits32 = tf.bitcast(y32, tf.int16).numpy().astype(np.int32)
    assert np.abs(bits16 - bits32).max() <= 1
    assert np.mean(bits16 == bits32) > 0.99


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16], ids=lambda d: d.name)
@pytest.mark.parametrize("axis", [-1, 1])
def test_a_nan_stays_in_its_group(axis, dtype):
    shape = (2, 32, 4, 4) if axis == 1 else (2, 4, 4, 32)
    x, gamma, beta = random_inputs(shape, axis, dtype, seed=4)
    values = x.numpy()
    index = (1, 5, 2, 3) if axis == 1 else (1, 2, 3, 5)  # sample 1, channel 5: group 1 of 4
    values[index] = np.nan
    y = np.asarray(tf.cast(fused_gn(tf.constant(values), gamma, beta, 4, axis), tf.float32))
    channels_first = y if axis == 1 else np.moveaxis(y, -1, 1)
    assert np.all(np.isnan(channels_first[1, 0:8]))
    assert np.all(np.isfinite(channels_first[0])) and np.all(np.isfinite(channels_first[1, 8:]))


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16], ids=lambda d: d.name)
@pytest.mark.parametrize("axis", [-1, 1])
def test_half_precision_gradients_match_the_reference(axis, dtype):
    shape = (2, 32, 6, 5) if axis == 1 else (2, 6, 5, 32)
    x, gamma, beta = random_inputs(shape, axis, dtype, seed=5)
    dy = tf.cast(np.random.default_rng(8).normal(size=shape), dtype)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y = fused_gn(x, gamma, beta, 8, axis)
    dx, dgamma, dbeta = tape.gradient(y, [x, gamma, beta], output_gradients=dy)
    assert dx.dtype == dtype
    x64, dy64 = (np.asarray(tf.cast(t, tf.float64)) for t in (x, dy))
    want_dx, want_dgamma, want_dbeta = reference.group_norm_grads(
        x64, np.asarray(gamma, np.float64), np.asarray(beta, np.float64), dy64, groups=8, axis=axis)
    tol = TOLERANCES[dtype]
    scale = np.abs(want_dx).max()
    np.testing.assert_allclose(np.asarray(tf.cast(dx, tf.float64)), want_dx, rtol=tol["rtol"], atol=tol["atol"] * scale)
    # dgamma / dbeta: float32 sums of exactly represented inputs
    np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-4, atol=1e-4 * np.abs(want_dgamma).max())
    np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-4, atol=1e-4 * np.abs(want_dbeta).max())


def test_large_offset_and_float16_near_max():
    x = tf.constant(1e4 + np.random.default_rng(6).normal(size=(2, 8, 8, 32)), tf.float32)
    ones, zeros = tf.ones(32), tf.zeros(32)
    y = fused_gn(x, ones, zeros, 8, -1)
    np.testing.assert_allclose(y, reference.group_norm(x.numpy(), groups=8), rtol=0, atol=1e-3)
    x16 = tf.constant(np.random.default_rng(7).uniform(60000, 65504, (2, 4, 4, 32)), tf.float16)
    y16 = fused_gn(x16, ones, zeros, 4, -1)
    assert np.all(np.isfinite(y16.numpy().astype("float32")))
    np.testing.assert_allclose(y16.numpy().astype("float64"),
                               reference.group_norm(x16.numpy(), groups=4), **TOLERANCES[tf.float16])


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16], ids=lambda d: d.name)
def test_row_blocks_give_the_bits_of_whole_sample_units(dtype):
    # Alone, a channels-last sample this size goes by row blocks (fewer
    # samples than units wanted); in a batch of 16, by whole-sample units.
    shape, axis, groups = ROW_BLOCK_SHAPE
    x, gamma, beta = random_inputs((16,) + shape[1:], axis, dtype, seed=7)
    dy = tf.cast(np.random.default_rng(8).normal(size=x.shape), dtype)

    def run(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fused_gn(x, gamma, beta, groups, axis, "silu")
        return y, tape.gradient(y, x, output_gradients=dy)

    y_batch, dx_batch = run(x, dy)
    for i in (0, 15):
        y_one, dx_one = run(x[i:i + 1], dy[i:i + 1])
        np.testing.assert_array_equal(y_one[0].numpy(), y_batch[i].numpy())
        np.testing.assert_array_equal(dx_one[0].numpy(), dx_batch[i].numpy())


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_threads(tmp_path):
    script = textwrap.dedent(
        """
        import sys, numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
        from keras_gn import ops
        rng = np.random.default_rng(0)
        out = {}
        for name, shape, axis in [("last", (3, 20, 20, 64), -1), ("first", (3, 64, 20, 20), 1),
                                  ("rows", (3, 4100, 64), -1)]:
            x = tf.constant(rng.normal(size=shape), tf.float32)
            g, b = tf.constant(rng.normal(size=64), tf.float32), tf.constant(rng.normal(size=64), tf.float32)
            dy = tf.constant(rng.normal(size=shape), tf.float32)
            with tf.GradientTape() as tape:
                tape.watch([x, g, b])
                y = ops.group_norm(x, g, b, groups=8, axis=axis, implementation="fused")
            grads = tape.gradient(y, [x, g, b], output_gradients=dy)
            for i, t in enumerate([y] + grads):
                out[f"{name}{i}"] = t.numpy()
        np.savez(sys.argv[2], **out)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = []
    for threads in (1, 2, 5):
        path = tmp_path / f"t{threads}.npz"
        subprocess.run([sys.executable, "-c", script, str(threads), str(path)], check=True, env=env,
                       capture_output=True, timeout=300)
        results.append(np.load(path))
    for key in results[0].files:
        for other in results[1:]:
            np.testing.assert_array_equal(results[0][key], other[key], err_msg=key)


@pytest.mark.parametrize(
    "x_shape, gamma_shape, groups, message",
    [
        ((4, 8), (8,), 2, "x must have rank 3, 4 or 5"),
        ((2, 3, 3, 3, 3, 8), (8,), 2, "x must have rank 3, 4 or 5"),
        ((2, 4, 4, 12), (12,), 5, "12 channels are not divisible by groups=5"),
        ((2, 4, 4, 12), (6,), 3, r"gamma and beta must have shape \[12\]"),
        ((2, 4, 4, 8), (8,), 2**62, r"groups=4611686018427387904 for 8 channels; groups must be between 1"),
        ((2, 4, 4, 0), (0,), 2**40, r"groups=1099511627776 for 0 channels"),
        ((2, 4, 4, 0), (0,), 1, r"x must have at least one channel"),
    ],
)
def test_bad_inputs_to_the_op_raise_clear_errors(x_shape, gamma_shape, groups, message):
    module = fused.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        module.keras_gn_group_norm(tf.zeros(x_shape), tf.ones(gamma_shape), tf.zeros(gamma_shape),
                                   groups=groups, epsilon=1e-5)


def test_bad_inputs_to_the_gradient_op_raise_clear_errors():
    module = fused.load()
    x, stats = tf.zeros((2, 4, 4, 8)), tf.zeros((2, 2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="dy has shape"):
        module.keras_gn_group_norm_grad(tf.zeros((2, 4, 4, 4)), x, tf.ones(8), tf.zeros(8), stats, stats, groups=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mean and rstd must have shape \[2,2\]"):
        module.keras_gn_group_norm_grad(x, x, tf.ones(8), tf.zeros(8), tf.zeros((2, 3)), stats, groups=2)
    # Arguments that once aborted the process (huge groups, no channels).
    for x, groups in ((tf.zeros((2, 4, 4, 8)), 2**62), (tf.zeros((2, 4, 4, 0)), 2**40)):
        channels = x.shape[-1]
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"groups={groups} for {channels} channels"):
            module.keras_gn_group_norm_grad(x, x, tf.ones(channels), tf.zeros(channels), stats, stats, groups=groups)


def test_empty_batch():
    y = fused_gn(tf.zeros((0, 4, 4, 8)), tf.ones(8), tf.zeros(8), 2, -1)
    assert y.shape == (0, 4, 4, 8)


# ------------------------------------------------------------ the layer's choice


def graph_op_types(layer, shape, jit_compile=False):
    fn = tf.function(layer, jit_compile=jit_compile)
    return {op.type for op in fn.get_concrete_function(tf.TensorSpec(shape)).graph.get_operations()}


def test_auto_uses_the_fused_op_where_it_can():
    layer = keras_gn.GroupNormalization(groups=4)
    layer.build((None, 6, 6, 16))
    assert "KerasGnGroupNorm" in graph_op_types(layer, (None, 6, 6, 16))
    composite = keras_gn.GroupNormalization(groups=4, implementation="composite")
    assert "KerasGnGroupNorm" not in graph_op_types(composite, (None, 6, 6, 16))
    rank2 = keras_gn.GroupNormalization(groups=4)  # rank 2: the op's [N, 1, C] view
    assert "KerasGnGroupNorm" in graph_op_types(rank2, (None, 16))
    rank6 = keras_gn.GroupNormalization(groups=4, axis=1)  # rank 6: its [N, C, S] view
    assert "KerasGnGroupNorm" in graph_op_types(rank6, (None, 16, 2, 3, 2, 2))
    middle_axis = keras_gn.GroupNormalization(groups=4, axis=2)
    assert "KerasGnGroupNorm" not in graph_op_types(middle_axis, (None, 6, 16, 6))


def test_auto_under_xla_uses_composite_and_fused_refuses():
    x = np.random.default_rng(8).normal(size=(2, 5, 5, 16)).astype("float32")
    auto = keras_gn.GroupNormalization(groups=4)
    np.testing.assert_allclose(tf.function(auto, jit_compile=True)(x), reference.group_norm(x, groups=4),
                               rtol=1e-5, atol=1e-5)
    forced = keras_gn.GroupNormalization(groups=4, implementation="fused", name="forced")
    with pytest.raises(ValueError, match="Layer 'forced': implementation='fused' cannot run here: XLA"):
        tf.function(forced, jit_compile=True)(x)


def test_fused_refuses_float64_and_auto_falls_back():
    x = np.random.default_rng(9).normal(size=(2, 3, 3, 8))
    with pytest.raises(ValueError, match="dtype float64"):
        keras_gn.GroupNormalization(groups=2, implementation="fused", dtype="float64")(x)
    y = keras_gn.GroupNormalization(groups=2, dtype="float64")(x)
    np.testing.assert_allclose(y, reference.group_norm(x, groups=2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_layer_activation_is_the_same_fused_or_composite(activation):
    x = np.random.default_rng(10).normal(size=(2, 6, 6, 16)).astype("float32")
    fused_layer = keras_gn.GroupNormalization(groups=4, activation=activation, implementation="fused")
    composite = keras_gn.GroupNormalization(groups=4, activation=activation, implementation="composite")
    np.testing.assert_allclose(fused_layer(x), composite(x), rtol=1e-5, atol=1e-5)
    expected = ACTIVATIONS[activation](reference.group_norm(x, groups=4))
    np.testing.assert_allclose(fused_layer(x), expected, rtol=1e-5, atol=1e-5)


def test_exported_savedmodel_does_not_contain_the_custom_op(tmp_path):
    inputs = keras.Input((6, 6, 16))
    model = keras.Model(inputs, keras_gn.GroupNormalization(groups=4)(inputs))
    model.export(str(tmp_path / "sm"), verbose=False)
    assert b"KerasGnGroupNorm" not in (tmp_path / "sm" / "saved_model.pb").read_bytes()


def test_fit_with_the_fused_op_and_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3),
                              keras_gn.GroupNormalization(groups=4, activation="silu", implementation="fused"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, dtype="float32")])
    model.compile(optimizer="sgd", loss="mse")
    gn = model.layers[1]
    before = gn.gamma.numpy().copy()
    loss = model.train_on_batch(np.random.default_rng(11).normal(size=(4, 8, 8, 3)), np.ones((4, 2)))
    assert np.isfinite(loss) and not np.allclose(before, gn.gamma.numpy())
