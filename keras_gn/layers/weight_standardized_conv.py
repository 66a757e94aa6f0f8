"""The `WeightStandardizedConv2D` Keras layer: Conv2D with Weight
Standardization, the companion of Group Normalization (GN+WS)."""

import keras
from keras import ops

from keras_gn.serialization import register

DEFAULT_EPSILON = 1e-10  # BiT's: far below any kernel's variance


def standardize_kernel(kernel, epsilon=DEFAULT_EPSILON):
    """Each output channel's weights with zero mean and unit variance.

    `kernel` is a Keras convolution kernel, `(*spatial, in_channels,
    filters)`: the statistics of each filter are taken over all its other
    axes (its fan-in), in float32 at least, and the result is returned in
    the kernel's dtype: `(w - mean) / sqrt(var + epsilon)` with the
    population variance, computed in two passes.
    """
    dtype = kernel.dtype
    work = ops.cast(kernel, "float64" if dtype == "float64" else "float32")
    fan_in_axes = tuple(range(len(kernel.shape) - 1))
    centered = work - ops.mean(work, axis=fan_in_axes, keepdims=True)
    variance = ops.mean(ops.square(centered), axis=fan_in_axes, keepdims=True)
    return ops.cast(centered * ops.rsqrt(variance + epsilon), dtype)


@register
class WeightStandardizedConv2D(keras.layers.Conv2D):
    """2D convolution whose kernel is standardized per output channel.

    Weight Standardization (Qiao et al. 2019) convolves with
    `(w - mean(w)) / sqrt(var(w) + epsilon)`, the statistics taken over each
    filter's fan-in (kernel height, width and input channels), instead of
    `w`. The trained variable stays the raw kernel; only the convolution
    sees it standardized. With a normalization after it (Group
    Normalization: GN+WS) the output no longer depends on the kernel's
    scale or offset. Qiao et al. report that this smooths the loss
    landscape and lets GN match or beat large-batch BN at any batch size;
    BiT (Kolesnikov et al. 2020) trains its GN ResNets this way.

    It takes the arguments of `keras.layers.Conv2D`, in the same order, and
    one more, by keyword.

    Args:
        filters: int, the number of output channels.
        kernel_size: int or tuple of 2 ints.
        standardization_epsilon: keyword-only float, added to each filter's
            variance. Defaults to `1e-10` (BiT's): far below the variance
            of any trained kernel, so that only the direction of each
            filter matters.
        **kwargs: the other `keras.layers.Conv2D` arguments (`strides`,
            `padding`, `data_format`, `dilation_rate`, `groups`,
            `use_bias`, initializers, regularizers, constraints) and base
            layer keyword arguments such as `name` and `dtype`.

    Call arguments:
        inputs: a 4D tensor.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` with
        `data_format="channels_last"`, or `(batch, channels, rows, cols)`
        with `"channels_first"`.

    Output shape:
        As `keras.layers.Conv2D`'s: `filters` channels, rows and columns
        from the padding and strides.

    Example:

    >>> import numpy as np
    >>> import keras_gn
    >>> conv = keras_gn.layers.WeightStandardizedConv2D(8, 3, padding="same")
    >>> y = conv(np.ones((1, 5, 5, 4), "float32"))
    >>> y.shape
    TensorShape([1, 5, 5, 8])
    >>> w = keras_gn.layers.standardize_kernel(conv.kernel)
    >>> bool(np.allclose(np.std(w, axis=(0, 1, 2)), 1.0, atol=1e-5))
    True

    Reference:
        - [Qiao et al., Micro-Batch Training with Batch-Channel
          Normalization and Weight Standardization, 2019](
          https://arxiv.org/abs/1903.10520)
        - [Kolesnikov et al., Big Transfer (BiT), ECCV 2020](
          https://arxiv.org/abs/1912.11370)
    """

    def __init__(self, *args, standardization_epsilon=DEFAULT_EPSILON, **kwargs):
        super().__init__(*args, **kwargs)  # Conv2D's, positional ones included
        if not isinstance(standardization_epsilon, (int, float)) or isinstance(
                standardization_epsilon, bool) or not standardization_epsilon > 0:
            raise ValueError(
                f"Layer '{self.name}': standardization_epsilon must be a positive float; "
                f"received standardization_epsilon={standardization_epsilon!r}."
            )
        self.standardization_epsilon = float(standardization_epsilon)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, standardize_kernel(kernel, self.standardization_epsilon))

    def get_config(self):
        return {**super().get_config(), "standardization_epsilon": self.standardization_epsilon}
