"""Group Normalization math, written once.

Everything in keras_gn that normalizes by groups goes through this module:
the `GroupNormalization` layer calls `group_norm`, and the checks on a group
configuration (`check_grouping_arguments`, `resolve_groups`) are shared by
the layer, `convert_bn_to_gn` and the zoo.

Numerical guarantees of the composite recipe:

- Statistics are computed in float32 for float16, bfloat16 and float32 inputs
  (float64 for float64 inputs). Half-precision inputs are cast up before any
  arithmetic, so values near the float16 maximum (65504) cannot overflow.
- Shifted two-pass statistics, as in the fused op: the data minus one of
  its own values per group (exact for data near it), then the mean of that
  and the mean of squared deviations from it. No one-pass `E[x^2] -
  E[x]^2`: inputs with a large offset (1e6 + N(0, 1)) keep their variance to
  1e-4 relative and their output to 1e-4 absolute. The variance is a mean
  of squares, hence never negative.
- The output is `(x - shift) * scale + (beta - mean * scale)` with `scale =
  gamma / sqrt(var + epsilon)`, `mean` that of `x - shift`: no pass more
  than the plain recipe's. It is returned in the statistics dtype; callers
  cast it to their compute dtype.
- A sample's output is bit-identical whatever else is in its batch: every
  sum is a chain of single-axis reductions, whose order TensorFlow does not
  change with the batch size, and `1 / sqrt` (correctly rounded) replaces
  the approximate vectorized `rsqrt`.
- A mask (`mask_positions`) restricts the statistics to the kept positions.
- Only reshape, sum, subtract, multiply, add, divide and sqrt are used, with
  the static shape kept wherever it is known, so graphs convert to TFLite
  builtin ops and compile under XLA.

`group_norm(..., implementation=...)` runs either this composite recipe or the
fused C++ kernel (`keras_gn.fused`, source in `custom_ops/`), which computes
the same function with the same guarantees by other means (one pass over
data shifted by one of its own values, combined per group in float64);
`resolve_implementation` decides.
"""

import functools

import tensorflow as tf
from tensorflow.python.ops import control_flow_util
from tensorflow.python.saved_model import save_context

IMPLEMENTATIONS = ("auto", "fused", "composite")
ACTIVATIONS = (None, "relu", "silu")
FUSED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


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


def _dims(dims):
    """A shape argument: the list itself where all are ints, else a tensor."""
    if all(isinstance(d, int) for d in dims):
        return dims
    return tf.stack([tf.cast(d, tf.int32) for d in dims])


def _reshape(x, dims):
    return tf.reshape(x, _dims(dims))


@functools.lru_cache(maxsize=None)
def _gpu_visible():
    return bool(tf.config.list_logical_devices("GPU"))


def fused_unsupported_reason(x, axis):
    """Why the fused op cannot compute GN of `x` here, or None if it can.

    The op runs on the CPU, and on a GPU where its CUDA kernels build, for
    float32/float16/bfloat16 inputs of rank 2 or more with the channels first
    (axis 1) or last, outside XLA compilation and outside SavedModel tracing
    (exported models must not depend on the op).
    """
    rank = x.shape.rank
    if x.dtype not in FUSED_DTYPES:
        return f"dtype {x.dtype.name} (the op takes float32, float16, bfloat16)"
    if rank is None or rank < 2:
        return f"rank {rank} (the op takes ranks 2 and up)"
    if axis % rank not in (1, rank - 1):
        return f"channel axis {axis} (the op takes channels first or last)"
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return "XLA compilation (jit_compile=True)"
    if save_context.in_save_context():
        return "SavedModel export"
    from keras_gn import fused

    if fused.load() is None:
        return f"the op could not be built: {fused.unavailable_reason()}"
    return None


def check_implementation(implementation, name="GroupNormalization"):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Layer '{name}': implementation={implementation!r} is not one of "
            f"{IMPLEMENTATIONS}."
        )


def check_activation(activation, name="GroupNormalization"):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Layer '{name}': activation={activation!r} is not one of {ACTIVATIONS}."
        )


def resolve_implementation(implementation, x, axis, name="GroupNormalization"):
    """Returns "fused" or "composite" for computing GN of `x`.

    "auto" is "fused" wherever the op can run (see
    `fused_unsupported_reason`), "composite" elsewhere; "fused" insists.
    Where a GPU is visible, "auto" stays "composite" until the op has been
    verified on this machine's GPU (`fused.gpu_op_verified`).

    Raises:
        ValueError: for "fused" where the op cannot run, or an unknown value.
    """
    check_implementation(implementation, name)
    if implementation == "composite":
        return "composite"
    if implementation == "auto" and _gpu_visible():
        from keras_gn import fused

        if not fused.gpu_op_verified():  # else opt in with "fused"
            return "composite"
    reason = fused_unsupported_reason(x, axis)
    if reason is None:
        return "fused"
    if implementation == "fused":
        raise ValueError(
            f"Layer '{name}': implementation='fused' cannot run here: {reason}. "
            "Use implementation='auto' to fall back to the composite recipe."
        )
    return "composite"


def _activate(x, activation):
    if activation == "relu":
        return tf.nn.relu(x)
    if activation == "silu":
        # x * sigmoid(x) with sigmoid(x) = (1 + tanh(x / 2)) / 2: TensorFlow's
        # tanh computes every element the same way, vectorized or not, so the
        # result does not depend on where the element falls in the batch
        # (tf.nn.silu's exp does).
        return x * (0.5 + 0.5 * tf.tanh(0.5 * x))
    return x


def check_epsilon(epsilon, name="GroupNormalization"):
    """Checks that `epsilon` is a finite number >= 0 and returns it as a float."""
    valid = isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
    if not valid or not 0 <= epsilon < float("inf"):
        raise ValueError(
            f"Layer '{name}': epsilon={epsilon!r} must be a finite number >= 0 "
            "(it is added to the variance; the default is 1e-5)."
        )
    return float(epsilon)


def channel_axis(axis, rank, name="GroupNormalization"):
    """The channel axis `axis` of a rank-`rank` input as a non-negative int.

    Raises:
        ValueError: naming the valid axes, for the batch axis 0 or an axis
            out of range.
    """
    if rank is None or rank < 2:
        raise ValueError(
            f"Layer '{name}' expects inputs of rank >= 2 (batch, ..., channels); "
            f"received an input of rank {rank}."
        )
    if isinstance(axis, bool) or not isinstance(axis, int) or not -rank <= axis < rank or axis % rank == 0:
        valid = list(range(1, rank)) + list(range(-rank + 1, 0))
        raise ValueError(
            f"Layer '{name}': axis={axis!r} is not a channel axis of a rank-{rank} "
            f"input (axis 0 is the batch). Valid values: {valid}."
        )
    return axis % rank


def group_norm(
    x,
    gamma=None,
    beta=None,
    *,
    groups,
    axis=-1,
    epsilon=1e-5,
    activation=None,
    mask=None,
    implementation="composite",
    name="GroupNormalization",
):
    """Group Normalization (Wu & He 2018, Eq. 1, 2, 6 and 7).

    The channel axis is split into `groups` groups; each sample is normalized
    to zero mean and unit variance over its non-batch, non-channel positions
    and the channels of its group; then a per-channel `gamma` scales and a
    per-channel `beta` shifts the result, and `activation` is applied.

    Args:
        x: tensor of rank >= 2 with a batch axis 0 and a statically known
            channel axis `axis`.
        gamma: optional per-channel scale of shape `(C,)`.
        beta: optional per-channel offset of shape `(C,)`.
        groups: int, number of groups; must divide `C`.
        axis: int, the channel axis (negative values count from the end; 0, the
            batch axis, is not allowed).
        epsilon: float >= 0, added to the variance.
        activation: None, "relu" or "silu", applied to the output.
        mask: optional boolean tensor over the non-channel axes of `x` (batch
            first; trailing axes may be left out and are broadcast): the
            statistics use the positions where it is True only. Every
            position is normalized. Masked calls use the composite recipe.
        implementation: "composite" (this module's TensorFlow ops), "fused"
            (the C++ kernel) or "auto" (see `resolve_implementation`).
        name: name of the calling layer, for error messages.

    Returns:
        A tensor of the shape of `x`: in `statistics_dtype(x.dtype)` from the
        composite recipe, in the dtype of `x` from the fused kernel.

    Raises:
        ValueError: for a bad `groups`, `axis`, `epsilon`, `activation` or
            `implementation`, naming the value and what would be valid.
    """
    x = tf.convert_to_tensor(x)
    axis = channel_axis(axis, x.shape.rank, name)
    resolve_groups(x.shape[axis], groups, name=name)
    epsilon = check_epsilon(epsilon, name)
    check_activation(activation, name)
    check_implementation(implementation, name)
    if mask is None and resolve_implementation(implementation, x, axis, name) == "fused":
        return _fused_group_norm(x, gamma, beta, groups, axis, epsilon, activation)
    return _activate(_composite_group_norm(x, gamma, beta, groups, axis, epsilon, mask), activation)


def _fused_group_norm(x, gamma, beta, groups, axis, epsilon, activation):
    from keras_gn import fused

    rank = x.shape.rank
    channels_last = axis == rank - 1
    channels = x.shape[axis]
    gamma = tf.ones([channels]) if gamma is None else tf.cast(gamma, tf.float32)
    beta = tf.zeros([channels]) if beta is None else tf.cast(beta, tf.float32)
    shape = _shape(x)
    if not 3 <= rank <= 5:  # the op's ranks; others are the same [N, S, C] / [N, C, S] view
        positions = _prod(shape[1:-1] if channels_last else shape[2:])
        x = _reshape(x, [shape[0], positions, channels] if channels_last else [shape[0], channels, positions])
    y = fused.group_norm(
        x,
        gamma,
        beta,
        groups=groups,
        epsilon=epsilon,
        channels_last=channels_last,
        activation=activation or "none",
    )
    return _reshape(y, shape)


def _prod(dims):
    """Product of a list of ints and scalar tensors (an int where all are ints)."""
    result = 1
    for d in dims:
        result = result * d
    return result


def _group_sums(v):
    """Sums of the grouped view `v` [N, A, G, C/G, B] over A, C/G and B, as
    [N, 1, G, 1, 1].

    Three single-axis reductions, innermost first: each sum then runs over
    its elements in one fixed order whatever the batch size, so a sample's
    statistics (and output) are bit-identical in any batch. One reduction
    over the axes together is transposed or split by TensorFlow differently
    for different batch sizes.
    """
    per_channel = tf.reduce_sum(tf.reduce_sum(v, axis=4, keepdims=True), axis=1, keepdims=True)
    return tf.reduce_sum(per_channel, axis=3, keepdims=True)


def mask_positions(mask, shape, axis):
    """A Keras mask as [N, A, 1, 1, B] weights (1 kept, 0 masked) for the
    grouped view [N, A, G, C/G, B] of an input of `shape` with channels on
    `axis`.

    The mask covers the input's non-channel axes in order (batch first); it
    may leave out trailing ones, over which it is broadcast: (batch, time)
    for a (batch, time, channels) sequence or a (batch, time, H, W, C) video,
    (batch, H, W) for channels-last images.
    """
    mask = tf.convert_to_tensor(mask)
    positions = shape[:axis] + shape[axis + 1 :]
    if mask.shape.rank is None or not 1 <= mask.shape.rank <= len(positions):
        raise ValueError(
            f"A mask of shape {mask.shape} does not fit an input of shape "
            f"{tuple(shape)} with channels on axis {axis}: it must cover the "
            f"non-channel axes {tuple(positions)} (batch first), or a leading "
            "part of them."
        )
    mask = tf.reshape(mask, _dims(_shape(mask) + [1] * (len(positions) - mask.shape.rank)))
    mask = tf.broadcast_to(mask, _dims(positions))
    return _reshape(mask, [shape[0], _prod(shape[1:axis]), 1, 1, _prod(shape[axis + 1 :])])


def _first_kept_values(view, weights):
    """[N, 1, G, 1, 1]: each group's first channel at the sample's first kept
    position (its first position, without a mask)."""
    if weights is None:
        return view[:, :1, :, :1, :1]
    kept = tf.reshape(weights, [tf.shape(weights)[0], -1])
    first = tf.argmax(kept, axis=1, output_type=tf.int32)  # 0 where all are masked
    b = tf.shape(view)[4]
    at_a = tf.gather(view, first // b, axis=1, batch_dims=1)  # [N, G, C/G, B]
    at_b = tf.gather(at_a, first % b, axis=3, batch_dims=1)  # [N, G, C/G]
    return at_b[:, None, :, :1, None]


def _composite_group_norm(x, gamma, beta, groups, axis, epsilon, mask=None):
    """GN with plain TensorFlow ops; see the module docstring's guarantees.

    The input is viewed as [N, A, G, C/G, B] (A: the axes before the
    channels, B: those after), and shifted by one of its own values per
    group (its first channel at the first kept position), as the fused op
    does: `d = x - shift` is exact for data near the shift, so the float32
    mean `m` and variance of `d` are accurate for data with a large common
    offset. The output is `d * scale + (beta - m * scale)`. The shift cancels
    in the result, and no gradient flows through it. With a `mask`, the
    statistics cover the kept positions only.
    """
    rank = x.shape.rank
    axis = axis % rank
    channels = x.shape[axis]
    dtype = statistics_dtype(x.dtype)
    x = tf.cast(x, dtype)
    shape = _shape(x)
    group_size = channels // groups
    view = _reshape(x, [shape[0], _prod(shape[1:axis]), groups, group_size, _prod(shape[axis + 1 :])])

    weights = None if mask is None else tf.cast(mask_positions(mask, shape, axis), dtype)
    if weights is None:
        count = tf.cast(_prod(shape[1:axis]) * _prod(shape[axis + 1 :]) * group_size, dtype)
    else:  # per sample; all masked: statistics 0, a finite output
        count = tf.maximum(tf.reduce_sum(weights, axis=[1, 4], keepdims=True) * group_size, 1.0)

    def group_mean(v):
        return _group_sums(v if weights is None else v * weights) / count

    shifted = view - tf.stop_gradient(_first_kept_values(view, weights))
    mean = group_mean(shifted)
    variance = group_mean(tf.math.squared_difference(shifted, mean))
    # 1 / sqrt, both correctly rounded, not rsqrt: TensorFlow's vectorized
    # rsqrt is approximate, and whether a sample's value goes through it or
    # through the exact scalar path depends on the batch size.
    scale = 1.0 / tf.sqrt(variance + tf.constant(epsilon, dtype))
    param_shape = [1, 1, groups, group_size, 1]
    if gamma is not None:
        scale = scale * tf.reshape(tf.cast(gamma, dtype), param_shape)
    offset = -mean * scale
    if beta is not None:
        offset = offset + tf.reshape(tf.cast(beta, dtype), param_shape)
    return _reshape(shifted * scale + offset, shape)
