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
