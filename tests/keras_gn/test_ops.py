"""Tests of keras_gn.ops: the grouping checks and the GN math against the
float64 reference."""

import numpy as np
import pytest
import tensorflow as tf

from keras_gn import ops
from tests import reference


def test_divisors():
    assert ops.divisors(12) == [1, 2, 3, 4, 6, 12]
    assert ops.divisors(1) == [1]


@pytest.mark.parametrize(
    "channels, groups, group_size, expected",
    [(64, 32, None, 32), (64, 1, None, 1), (64, 64, None, 64), (64, None, 16, 4), (6, None, 1, 6)],
)
def test_resolve_groups(channels, groups, group_size, expected):
    assert ops.resolve_groups(channels, groups, group_size) == expected


@pytest.mark.parametrize(
    "channels, groups, group_size, message",
    [
        (None, 32, None, "unknown size"),
        (24, 32, None, r"groups=32 is more than the 24 input channels\. Valid group counts for 24 channels: \[1, 2, 3, 4, 6, 8, 12, 24\]"),
        (48, 32, None, r"48 input channels cannot be split into groups=32 .*Valid group counts for 48 channels: \[1, 2, 3, 4, 6, 8, 12, 16, 24, 48\]"),
        (48, None, 5, r"group_size=5 does not divide the 48 input channels\. Valid group sizes"),
        (48, 4, 4, "exactly one of"),
        (48, None, None, "exactly one of"),
        (48, 0, None, r"`groups` must be a positive integer or None; received groups=0"),
        (48, 2.0, None, "positive integer"),
        (48, True, None, "positive integer"),
        (48, None, -3, "group_size=-3"),
    ],
)
def test_resolve_groups_errors_name_layer_channels_and_valid_values(
    channels, groups, group_size, message
):
    with pytest.raises(ValueError, match="Layer 'my_gn'") as error:
        ops.resolve_groups(channels, groups, group_size, name="my_gn")
    assert error.match(message)


@pytest.mark.parametrize(
    "shape, axis, groups",
    [
        ((3, 10), -1, 5),
        ((2, 17, 32), -1, 8),
        ((2, 32, 17), 1, 32),
        ((2, 5, 6, 64), -1, 32),
        ((2, 64, 5, 6), 1, 1),
        ((2, 5, 64, 6), 2, 4),
        ((2, 3, 4, 5, 16), -1, 4),
        ((2, 16, 3, 4, 5), 1, 16),
    ],
)
def test_group_norm_matches_reference(shape, axis, groups):
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    channels = shape[axis]
    gamma = rng.normal(size=channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    y = ops.group_norm(x, gamma, beta, groups=groups, axis=axis, epsilon=1e-5)
    assert y.dtype == tf.float32
    # float32: 1e-5 relative to values of order 1 (|y| <= ~10 here).
    np.testing.assert_allclose(
        y, reference.group_norm(x, gamma, beta, groups=groups, axis=axis), rtol=1e-5, atol=2e-5
    )


def test_group_norm_float64_is_exact_to_float64_precision():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 4, 8))
    y = ops.group_norm(x, groups=4)
    assert y.dtype == tf.float64
    np.testing.assert_allclose(y, reference.group_norm(x, groups=4), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis, groups", [(-1, 4), (1, 2), (2, 3)])
def test_gradients_match_finite_differences(axis, groups):
    rng = np.random.default_rng(3)
    shape = {-1: (2, 3, 5, 8), 1: (2, 4, 3, 5), 2: (2, 3, 6, 2)}[axis]
    channels = shape[axis]
    x = tf.constant(rng.normal(1.0, 2.0, size=shape))
    gamma = tf.constant(rng.normal(size=channels))
    beta = tf.constant(rng.normal(size=channels))
    # A random upstream gradient, so every output element matters.
    upstream = tf.constant(rng.normal(size=shape))

    def loss(x, gamma, beta):
        y = ops.group_norm(x, gamma, beta, groups=groups, axis=axis)
        return tf.reduce_sum(y * upstream)

    analytic, numeric = tf.test.compute_gradient(loss, [x, gamma, beta], delta=1e-4)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- the grid
# Every implementation x dtype x layout x rank (2 to 5), groups 1 and C, a
# 1x1 spatial extent and a batch of one, against the float64 reference:
# outputs and the gradients with respect to x, gamma and beta.

# Per input dtype, on outputs and gradients of order 1 (|y| < ~10), against
# the float64 reference evaluated on the same (already rounded) input and
# upstream gradient: about two units in the last place of the dtype there.
GRID_TOLERANCES = {
    "float64": dict(rtol=1e-12, atol=1e-12),
    "float32": dict(rtol=1e-5, atol=2e-5),
    "float16": dict(rtol=2e-3, atol=4e-3),
    "bfloat16": dict(rtol=1.6e-2, atol=3e-2),
}
CHANNELS = 6
GRID_SHAPES = {  # rank: (batch, spatial extent) cases
    2: [(2, ()), (1, ())],
    3: [(2, (7,)), (1, (1,))],
    4: [(2, (3, 5)), (1, (1, 1))],
    5: [(2, (2, 3, 2)), (1, (1, 1, 1))],
}
GRID = [(rank, batch, spatial) for rank, cases in GRID_SHAPES.items() for batch, spatial in cases]


def _rounded(values, dtype):
    """`values` rounded to `dtype`, as float64 NumPy (what the op really sees)."""
    return np.asarray(tf.cast(tf.cast(values, dtype), tf.float64))


def _run(x, gamma, beta, dy, **kwargs):
    """group_norm's output (cast to x's dtype, as the layer does) and its
    gradients with respect to x, gamma and beta for the upstream `dy`."""
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y = tf.cast(ops.group_norm(x, gamma, beta, **kwargs), x.dtype)
        loss = tf.reduce_sum(tf.cast(y, tf.float64) * dy)
    return (y, *tape.gradient(loss, [x, gamma, beta]))


@pytest.mark.parametrize("implementation", ops.IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", list(GRID_TOLERANCES))
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("rank, batch, spatial", GRID)
@pytest.mark.parametrize("groups", [1, CHANNELS])
def test_every_combination_matches_the_reference(implementation, dtype, channels_last, rank, batch, spatial,
                                                 groups):
    rng = np.random.default_rng(rank * 10 + batch)
    shape = (batch, *spatial, CHANNELS) if channels_last else (batch, CHANNELS, *spatial)
    axis = -1 if channels_last else 1
    x = tf.constant(rng.normal(1.0, 2.0, size=shape), dtype)
    # float32 gamma/beta (the variables of a mixed-precision layer); float64
    # ones for float64 (a float64 layer's).
    parameter_dtype = tf.float64 if dtype == "float64" else tf.float32
    gamma, beta = (tf.constant(rng.normal(size=CHANNELS), parameter_dtype) for _ in range(2))
    if implementation == "fused" and dtype == "float64":
        with pytest.raises(ValueError, match="dtype float64"):
            ops.group_norm(x, gamma, beta, groups=groups, axis=axis, implementation="fused")
        return
    dy = _rounded(rng.normal(size=shape), dtype)
    y, dx, dgamma, dbeta = _run(x, gamma, beta, dy, groups=groups, axis=axis, implementation=implementation)
    assert y.dtype == dtype and dx.dtype == dtype

    x64 = _rounded(x, dtype)
    tolerance = GRID_TOLERANCES[dtype]
    expected = reference.group_norm(x64, gamma, beta, groups=groups, axis=axis)
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float64)), expected, **tolerance)
    expected_grads = reference.group_norm_grads(x64, gamma, beta, dy, groups=groups, axis=axis)
    np.testing.assert_allclose(np.asarray(tf.cast(dx, tf.float64)), expected_grads[0], **tolerance)
    # dgamma and dbeta sum over batch and positions (up to 24 terms here):
    # float32 accumulation, the half-precision error of each term.
    for got, want in zip((dgamma, dbeta), expected_grads[1:]):
        np.testing.assert_allclose(got, want, rtol=tolerance["rtol"], atol=10 * tolerance["atol"])


@pytest.mark.parametrize("implementation", ["fused", "composite"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_activation_and_its_gradient_match_the_reference(implementation, activation, channels_last):
    rng = np.random.default_rng(11)
    shape = (2, 5, 4, 8) if channels_last else (2, 8, 5, 4)
    axis = -1 if channels_last else 1
    x = tf.constant(rng.normal(size=shape), tf.float32)
    gamma, beta = (tf.constant(rng.normal(size=8), tf.float32) for _ in range(2))
    dy = rng.normal(size=shape)
    y, dx, dgamma, dbeta = _run(x, gamma, beta, dy, groups=4, axis=axis, activation=activation,
                                implementation=implementation)
    kwargs = dict(groups=4, axis=axis, activation=activation)
    np.testing.assert_allclose(y, reference.group_norm(x, gamma, beta, **kwargs), rtol=1e-5, atol=2e-5)
    for got, want in zip((dx, dgamma, dbeta), reference.group_norm_grads(x, gamma, beta, dy, **kwargs)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------- numerics of the composite


BATCH_CASES = [((8, 16, 16, 64), -1, 32), ((8, 64, 16, 16), 1, 32), ((8, 7, 7, 2048), -1, 32),
               ((8, 32, 32, 16), -1, 1), ((8, 1000, 3), -1, 1), ((8, 3, 1000), 1, 3), ((8, 5, 5, 3), -1, 3),
               ((8, 64), -1, 4), ((8, 4, 5, 6, 8), -1, 2)]


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize(
    "implementation, shape, axis, groups",
    [("fused", *case) for case in BATCH_CASES]
    + [("composite", *case) for case in BATCH_CASES + [((8, 5, 6, 7), 2, 3)]],  # a middle channel axis
)
def test_a_sample_output_is_identical_whatever_its_batch(implementation, activation, shape, axis, groups):
    x = np.random.default_rng(12).normal(1.0, 3.0, size=shape).astype("float32")
    kwargs = dict(groups=groups, axis=axis, activation=activation, implementation=implementation)
    full = ops.group_norm(x, **kwargs).numpy()
    for batch in (1, 2, 3, 5):
        np.testing.assert_array_equal(ops.group_norm(x[:batch], **kwargs).numpy(), full[:batch])


@pytest.mark.parametrize("implementation", ["fused", "composite"])
@pytest.mark.parametrize("offset", [1e4, 1e5, 1e6])
@pytest.mark.parametrize("channels_last", [True, False])
def test_a_large_common_offset_costs_no_accuracy(implementation, offset, channels_last):
    # offset + N(0, 1) in float32: the reference sees the same rounded
    # inputs. Output error 1e-4 bounds the relative variance error near 2e-4
    # and the centering error (the float32 mean alone is off by up to
    # ulp(1e6) / 2 = 0.03).
    shape = (2, 8, 8, 32) if channels_last else (2, 32, 8, 8)
    axis = -1 if channels_last else 1
    x = (offset + np.random.default_rng(13).normal(size=shape)).astype("float32")
    y = ops.group_norm(x, groups=8, axis=axis, implementation=implementation)
    expected = reference.group_norm(x, groups=8, axis=axis)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)
    # The variance itself: the output's per-group variance is
    # var / (var + eps), within 1e-4 relative of the reference's.
    grouped = lambda v: np.moveaxis(np.asarray(v, np.float64), axis, 1).reshape(2, 8, -1)
    np.testing.assert_allclose(grouped(y).var(axis=2), grouped(expected).var(axis=2), rtol=1e-4)


def test_float64_keeps_epsilon_and_statistics_in_float64():
    # Variance 1e-8 with epsilon 1e-7: epsilon rounded through float32
    # (1.0000000116e-7) would move the output by ~5e-9 relative.
    x = np.random.default_rng(14).normal(size=(2, 4, 4, 8)) * 1e-4
    y = ops.group_norm(x, groups=4, epsilon=1e-7)
    assert y.dtype == tf.float64
    np.testing.assert_allclose(y, reference.group_norm(x, groups=4, epsilon=1e-7), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------- masks


def _padded_batch(lengths, rng, channels=8, extent=9, channels_last=True, junk=50.0):
    """Sequences of `lengths` padded to `extent` with junk values, and their mask."""
    real = [rng.normal(1.0, 2.0, size=(length, channels)) for length in lengths]
    x = rng.normal(junk, junk, size=(len(lengths), extent, channels))
    for i, sequence in enumerate(real):
        x[i, : len(sequence)] = sequence
    mask = np.arange(extent)[None, :] < np.array(lengths)[:, None]
    if not channels_last:
        x, real = np.swapaxes(x, 1, 2), [s.T for s in real]
    return x.astype("float32"), mask, [s.astype("float32") for s in real]


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_masked_padded_sequence_normalizes_like_the_unpadded_one(channels_last):
    rng = np.random.default_rng(15)
    x, mask, real = _padded_batch([9, 6, 3, 1], rng, channels_last=channels_last)
    axis = -1 if channels_last else 1
    gamma, beta = rng.normal(size=8), rng.normal(size=8)
    dy = rng.normal(size=x.shape) * (mask[:, :, None] if channels_last else mask[:, None, :])
    xt = tf.constant(x)
    y, dx, dgamma, dbeta = _run(xt, tf.constant(gamma, tf.float32), tf.constant(beta, tf.float32), dy,
                                groups=4, axis=axis, mask=mask)
    np.testing.assert_allclose(y, reference.group_norm(x, gamma, beta, groups=4, axis=axis, mask=mask),
                               rtol=1e-5, atol=2e-5)
    for i, sequence in enumerate(real):
        length = sequence.shape[0 if channels_last else 1]
        kept = (slice(i, i + 1), slice(0, length)) if channels_last else (slice(i, i + 1), slice(None), slice(0, length))
        unpadded = reference.group_norm(sequence[None], gamma, beta, groups=4, axis=axis)
        np.testing.assert_allclose(np.asarray(y)[kept], unpadded, rtol=1e-5, atol=2e-5)
        # With no upstream gradient on the padding, the real positions get
        # the unpadded sequence's gradient and the padding none.
        grads = reference.group_norm_grads(sequence[None], gamma, beta, np.asarray(dy)[kept], groups=4, axis=axis)
        np.testing.assert_allclose(np.asarray(dx)[kept], grads[0], rtol=1e-4, atol=1e-5)
    padding = ~mask[:, :, None] if channels_last else ~mask[:, None, :]
    assert np.all(np.asarray(dx)[np.broadcast_to(padding, x.shape)] == 0)


def test_masked_gradients_match_the_reference():
    rng = np.random.default_rng(16)
    x, mask, _ = _padded_batch([7, 4, 2], rng)
    gamma, beta = (tf.constant(rng.normal(size=8), tf.float32) for _ in range(2))
    dy = rng.normal(size=x.shape)  # on the padding too: it flows back through the statistics
    outputs = _run(tf.constant(x), gamma, beta, dy, groups=2, mask=mask, activation="silu")
    expected = reference.group_norm_grads(x, gamma, beta, dy, groups=2, mask=mask, activation="silu")
    for got, want in zip(outputs[1:], expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [True, False])
def test_masked_images_and_a_broadcast_mask(channels_last):
    rng = np.random.default_rng(17)
    shape = (3, 6, 5, 8) if channels_last else (3, 8, 6, 5)
    axis = -1 if channels_last else 1
    x = rng.normal(size=shape).astype("float32")
    pixels = rng.uniform(size=(3, 6, 5)) < 0.6  # (batch, H, W)
    rows = np.array([[True] * 6, [True] * 4 + [False] * 2, [True] + [False] * 5])  # (batch, H): over W
    for mask in (pixels, rows):
        y = ops.group_norm(x, groups=2, axis=axis, mask=mask)
        np.testing.assert_allclose(y, reference.group_norm(x, groups=2, axis=axis, mask=mask), rtol=1e-5, atol=2e-5)


def test_an_all_masked_sample_gives_finite_outputs_and_gradients():
    x = tf.constant(np.random.default_rng(18).normal(size=(2, 5, 4)).astype("float32"))
    mask = np.array([[True] * 5, [False] * 5])
    y, dx, dgamma, dbeta = _run(x, tf.ones([4]), tf.zeros([4]), np.ones((2, 5, 4)), groups=2, mask=mask)
    assert all(np.all(np.isfinite(t)) for t in (y, dx, dgamma, dbeta))


def test_a_mask_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"does not fit an input of shape \(2, 5, 4\) with channels on axis 2"):
        ops.group_norm(tf.zeros((2, 5, 4)), groups=2, mask=tf.ones((2, 5, 4, 1), bool))


# ------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(groups=3), r"8 input channels cannot be split into groups=3 .*Valid group counts for 8 channels: \[1, 2, 4, 8\]"),
        (dict(groups=0), r"received groups=0"),
        (dict(groups=16), r"groups=16 is more than the 8 input channels"),
        (dict(groups=2, axis=0), r"axis 0 is the batch"),
        (dict(groups=2, axis=4), r"axis=4 is not a channel axis of a rank-4 input"),
        (dict(groups=2, epsilon=-1e-3), r"epsilon=-0.001 must be a finite number >= 0"),
        (dict(groups=2, epsilon=float("nan")), r"epsilon=nan"),
        (dict(groups=2, activation="gelu"), r"activation='gelu' is not one of"),
        (dict(groups=2, implementation="fast"), r"implementation='fast' is not one of"),
    ],
)
def test_bad_arguments_get_the_layer_s_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.group_norm(tf.zeros((2, 3, 3, 8)), **kwargs)
