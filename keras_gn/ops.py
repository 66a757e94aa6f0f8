"""Group Normalization math, written once.

Everything in keras_gn that normalizes by groups goes through this module:
the `GroupNormalization` layer calls `group_norm`, and the checks on a group
configuration (`resolve_groups`) are shared by the layer and by
`convert_bn_to_gn`.

Numerical guarantees of `group_norm`:

- Statistics are computed in float32 for float16, bfloat16 and float32 inputs
  (float64 for float64 inputs). Half-precision inputs are cast up before any
  arithmetic, so values near the float16 maximum (65504) cannot overflow.
- The variance is two-pass: the mean first, then the mean of squared
  deviations from it. There is no one-pass `E[x^2] - E[x]^2`, so inputs with
  a large offset (e.g. 1e4 + N(0, 1)) keep accurate statistics. The variance
  is a mean of squares, hence never negative.
- The output is `(x - mean) * (gamma * rsqrt(var + epsilon)) + beta`, which
  keeps the centering exact for large offsets, and it is returned in the
  statistics dtype; callers cast it to their compute dtype.
- Only reshape, mean, subtract, multiply, add and rsqrt are used, with the
  static shape kept wherever it is known, so graphs convert to TFLite
  builtin ops and compile under XLA.
"""

import tensorflow as tf


def divisors(n):
    """Returns the positive divisors of `n` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


class _DefaultGroups(int):
    """The default `groups=32`, distinguishable from an explicit 32.

    Lets `GroupNormalization(group_size=16)` work while
    `GroupNormalization(groups=32, group_size=16)` is still rejected as
    ambiguous.
    """

    def __repr__(self):
        return "32"


DEFAULT_GROUPS = _DefaultGroups(32)


def check_grouping_arguments(groups, group_size, name="GroupNormalization"):
    """Checks that exactly one of `groups` and `group_size` is a positive int.

    A `groups` left at `DEFAULT_GROUPS` gives way to an explicit `group_size`.

    Returns:
        `groups` as a plain int, or None when `group_size` is used.

    Raises:
        ValueError: naming the layer and the received values otherwise.
    """
    if group_size is not None and groups is DEFAULT_GROUPS:
        groups = None
    for arg, value in (("groups", groups), ("group_size", group_size)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f"Layer '{name}': `{arg}` must be a positive integer or None; "
                f"received {arg}={value!r}."
            )
    if (groups is None) == (group_size is None):
        raise ValueError(
            f"Layer '{name}': pass exactly one of `groups` (number of groups) "
            f"and `group_size` (channels per group); received groups={groups}, "
            f"group_size={group_size}."
        )
    return None if groups is None else int(groups)


def resolve_groups(channels, groups=None, group_size=None, name="GroupNormalization"):
    """Returns the number of groups for a tensor with `channels` channels.

    Exactly one of `groups` (the number of groups) and `group_size` (channels
    per group) must be given, and it must divide `channels` evenly.
    `check_grouping_arguments` validates the arguments themselves.

    Args:
        channels: int, size of the channel axis.
        groups: int or None, number of groups.
        group_size: int or None, channels per group.
        name: name of the layer, quoted in error messages.

    Returns:
        The number of groups, an int that divides `channels`.

    Raises:
        ValueError: with the layer's name, the channel count, the requested
            grouping and the valid choices, when the grouping is impossible.
    """
    if channels is None:
        raise ValueError(
            f"Layer '{name}' needs a known channel dimension to split it into "
            "groups, but the channel axis of its input has unknown size (None). "
            "Give the model's Input a fixed number of channels."
        )
    check_grouping_arguments(groups, group_size, name=name)
    valid = divisors(channels)
    if group_size is not None:
        if channels % group_size:
            raise ValueError(
                f"Layer '{name}': group_size={group_size} does not divide the "
                f"{channels} input channels. Valid group sizes for {channels} "
                f"channels: {valid}."
            )
        return channels // group_size
    if groups > channels:
        raise ValueError(
            f"Layer '{name}': groups={groups} is more than the {channels} input "
            f"channels. Valid group counts for {channels} channels: {valid}."
        )
    if channels % groups:
        raise ValueError(
            f"Layer '{name}': {channels} input channels cannot be split into "
            f"groups={groups} equal groups ({channels} is not divisible by "
            f"{groups}). Valid group counts for {channels} channels: {valid}."
        )
    return groups


def statistics_dtype(dtype):
    """The dtype statistics are computed in: float64 for float64, else float32."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def _shape(x):
    """Shape of `x` as a list: Python ints where static, scalar tensors where not.

    Reshaping to such a list keeps all the static shape information, which
    TFLite conversion and the layers after this one rely on.
    """
    static = x.shape.as_list()
    if None not in static:
        return static
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def _reshape(x, dims):
    if all(isinstance(d, int) for d in dims):
        return tf.reshape(x, dims)
    return tf.reshape(x, tf.stack(dims))


def group_norm(x, gamma=None, beta=None, *, groups, axis=-1, epsilon=1e-5):
    """Group Normalization (Wu & He 2018, Eq. 1, 2, 6 and 7).

    The channel axis is split into `groups` groups; each sample is normalized
    to zero mean and unit variance over its non-batch, non-channel positions
    and the channels of its group; then a per-channel `gamma` scales and a
    per-channel `beta` shifts the result.

    Args:
        x: tensor of rank >= 2 with a batch axis 0 and a statically known
            channel axis `axis`.
        gamma: optional per-channel scale of shape `(C,)`.
        beta: optional per-channel offset of shape `(C,)`.
        groups: int, number of groups; must divide `C`.
        axis: int, the channel axis (negative values count from the end; 0, the
            batch axis, is not allowed).
        epsilon: float, added to the variance.

    Returns:
        A tensor of the shape of `x` in `statistics_dtype(x.dtype)`.
    """
    x = tf.convert_to_tensor(x)
    rank = x.shape.rank
    axis = axis % rank
    channels = x.shape[axis]
    dtype = statistics_dtype(x.dtype)
    x = tf.cast(x, dtype)

    shape = _shape(x)
    grouped_shape = shape[:axis] + [groups, channels // groups] + shape[axis + 1 :]
    grouped = _reshape(x, grouped_shape)
    # The grouped tensor has the group axis at `axis` and the channels of a
    # group at `axis + 1`; statistics reduce everything else but the batch.
    reduce_axes = [i for i in range(1, rank + 1) if i != axis]
    mean = tf.reduce_mean(grouped, axis=reduce_axes, keepdims=True)
    centered = grouped - mean
    variance = tf.reduce_mean(tf.square(centered), axis=reduce_axes, keepdims=True)
    inv_std = tf.math.rsqrt(variance + tf.cast(epsilon, dtype))

    # Per-channel parameters laid out like the grouped tensor.
    param_shape = [1] * (rank + 1)
    param_shape[axis] = groups
    param_shape[axis + 1] = channels // groups
    scale = inv_std
    if gamma is not None:
        scale = scale * tf.reshape(tf.cast(gamma, dtype), param_shape)
    outputs = centered * scale
    if beta is not None:
        outputs = outputs + tf.reshape(tf.cast(beta, dtype), param_shape)

    return _reshape(outputs, shape)
