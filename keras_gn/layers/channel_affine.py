"""The `ChannelAffine` Keras layer: a fixed per-channel scale and offset."""

import keras

from keras_gn.serialization import register


@register
class ChannelAffine(keras.layers.Layer):
    """Per-channel affine transform `y = x * scale + offset`.

    This is what a BatchNormalization layer computes in inference mode, with
    `scale = gamma / sqrt(moving_variance + epsilon)` and
    `offset = beta - moving_mean * scale`. `keras_gn.freeze_bn` replaces each
    BatchNormalization with one of these to build the paper's "BN*" baseline
    (frozen BN for fine-tuning; Caffe2/Detectron's `AffineChannel`,
    torchvision's `FrozenBatchNorm2d`): the statistics can no longer change,
    whatever the batch size or the `training` flag.

    Args:
        axis: int, the channel axis. Defaults to `-1`.
        **kwargs: base layer keyword arguments, such as `name`, `dtype` and
            `trainable` (`False` freezes `scale` and `offset` too).

    Call arguments:
        inputs: a tensor whose channel dimension is known.

    Input shape:
        Arbitrary, with a known channel dimension on `axis`.

    Output shape:
        Same shape as the input.

    Example:

    >>> import numpy as np
    >>> import keras_gn
    >>> layer = keras_gn.ChannelAffine(axis=-1)
    >>> y = layer(np.ones((1, 4, 4, 3), "float32"))
    >>> layer.set_weights([np.full(3, 2.0), np.full(3, 1.0)])
    >>> float(layer(np.ones((1, 4, 4, 3), "float32"))[0, 0, 0, 0])
    3.0

    Reference:
        - [Wu & He, Group Normalization, ECCV 2018](
          https://arxiv.org/abs/1803.08494), section 5 (BN*).
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(
                f"Layer '{self.name}': `axis` must be a single int; received "
                f"axis={axis!r}."
            )
        self.axis = axis
        # Elementwise: a mask passes through unchanged, as through BN.
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"Layer '{self.name}': axis={self.axis} is out of range for a "
                f"rank-{rank} input; valid values are {-rank} to {rank - 1}."
            )
        axis = self.axis % rank
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"Layer '{self.name}' needs a known channel dimension; received "
                f"input shape {tuple(input_shape)}."
            )
        self._broadcast_shape = tuple(channels if i == axis else 1 for i in range(rank))
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={axis: channels})
        self.scale = self.add_weight(
            shape=(channels,), name="scale", initializer="ones", autocast=False
        )
        self.offset = self.add_weight(
            shape=(channels,), name="offset", initializer="zeros", autocast=False
        )

    def call(self, inputs):
        # Like BatchNormalization: half-precision inputs are computed in float32.
        dtype = "float64" if inputs.dtype == "float64" else "float32"
        x = keras.ops.cast(inputs, dtype)
        scale = keras.ops.reshape(keras.ops.cast(self.scale, dtype), self._broadcast_shape)
        offset = keras.ops.reshape(keras.ops.cast(self.offset, dtype), self._broadcast_shape)
        return keras.ops.cast(x * scale + offset, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
