"""The `GroupNormalization` Keras layer."""

import keras

from keras_gn import ops
from keras_gn.serialization import register


@register
class GroupNormalization(keras.layers.Layer):
    """Group Normalization layer (Wu & He, 2018).

    Splits the channels into groups and normalizes each sample over its
    spatial positions and the channels of its group, then applies a learned
    per-channel scale `gamma` and offset `beta`:

    ```
    y = (x - mean[n, g]) / sqrt(var[n, g] + epsilon) * gamma[c] + beta[c]
    ```

    where `g` is the group of channel `c`. The statistics are per sample, so,
    unlike `BatchNormalization`, the layer behaves the same in training and
    inference and does not depend on the batch size: it stays accurate at
    one or two images per device, where batch statistics become noise.

    Relation to other layers: `groups=1` is Layer Normalization over all
    non-batch axes (with per-channel `gamma`/`beta`); `groups=C` (or
    `group_size=1`) is Instance Normalization.

    Differences from `keras.layers.GroupNormalization`: `epsilon` defaults to
    1e-5 (the paper's, Caffe2's and PyTorch's `nn.GroupNorm` default; Keras
    uses 1e-3, which matters when porting weights); the grouping can be given
    as channels per group (`group_size`, as in the paper's Table 3); `axis` is
    a single int; a Keras mask restricts the statistics to the unmasked
    positions; outputs do not depend on the other samples of the batch, to
    the bit; errors list the valid group counts.

    Args:
        groups: int, the number of groups the channels are split into; must
            divide the number of channels. Give either `groups` or
            `group_size`, not both. Defaults to `32`.
        group_size: int or None, the number of channels per group, an
            alternative to `groups`; must divide the number of channels.
            Defaults to `None`.
        axis: int, the channel axis: `-1` for channels-last inputs, `1` for
            channels-first. Negative values count from the end; the batch axis
            0 is not allowed. Defaults to `-1`.
        epsilon: float >= 0, small value added to the variance to avoid
            dividing by zero. `0` divides by the exact standard deviation: a
            constant group (or a fully masked sample) then gives NaN or inf.
            Defaults to `1e-5`.
        center: bool, whether to add the learned offset `beta`. Defaults to
            `True`.
        scale: bool, whether to multiply by the learned scale `gamma`.
            Defaults to `True`.
        beta_initializer: initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: initializer for `gamma`. Defaults to `"ones"`; use
            `"zeros"` for the last normalization of a residual branch, as the
            paper does.
        beta_regularizer: optional regularizer for `beta`. Defaults to `None`.
        gamma_regularizer: optional regularizer for `gamma`. Defaults to
            `None`.
        beta_constraint: optional constraint for `beta`. Defaults to `None`.
        gamma_constraint: optional constraint for `gamma`. Defaults to `None`.
        activation: `None`, `"relu"` or `"silu"`: an activation applied to the
            output, fused into the kernel (forward and backward) when the
            fused implementation runs. Defaults to `None`.
        implementation: `"auto"`, `"fused"` or `"composite"`. `"fused"` is a
            C++ TensorFlow kernel (CPU, and CUDA on a GPU where nvcc is found;
            float32, float16 and bfloat16 inputs of rank 2 or more, channels
            first or last), compiled on first use;
            `"composite"` is plain TensorFlow ops (any rank, dtype and
            device, XLA, TFLite). `"auto"` uses the fused kernel wherever it
            can run (on a GPU not yet: its CUDA kernels await verification
            there) and the composite recipe elsewhere, including under
            `jit_compile=True`, while exporting a SavedModel, and when the
            kernel cannot be compiled. Both compute the same function.
            Calls with a mask always use the composite recipe (the kernel
            takes no mask). Defaults to `"auto"`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank 2 or more (typically 3, 4 or 5: 1-D signals,
            images, videos) whose channel dimension is known. Rank 2,
            `(batch, features)`, is Layer Normalization over groups of
            features.
        mask: optional boolean tensor over the input's non-channel axes
            (batch first), e.g. `(batch, time)` from an `Embedding(...,
            mask_zero=True)` or `Masking` layer, or `(batch, height, width)`
            for padded images; trailing axes may be left out and are
            broadcast. Keras passes it automatically. The statistics then use
            the unmasked positions only, so a padded sequence normalizes its
            real positions exactly as the unpadded one; every position is
            normalized, and the mask is passed on unchanged.

    Input shape:
        Arbitrary, with the batch on axis 0 and a known channel dimension on
        `axis`, e.g. `(batch, height, width, channels)`.

    Output shape:
        Same shape as the input.

    Mixed precision: inputs are not cast to the compute dtype first (like
    `keras.layers.GroupNormalization`): statistics are computed in float32
    for float16, bfloat16 and float32 inputs (float64 for float64 inputs),
    so a float32 input holding values beyond float16's range (65504) under
    `mixed_float16` is normalized correctly; `gamma` and `beta` are float32
    variables, and the output is in the compute dtype (float16/bfloat16).

    Example:

    >>> import numpy as np
    >>> import keras_gn
    >>> x = np.random.rand(2, 8, 8, 64).astype("float32")
    >>> layer = keras_gn.GroupNormalization(groups=32)
    >>> y = layer(x)
    >>> tuple(y.shape)
    (2, 8, 8, 64)
    >>> keras_gn.GroupNormalization(group_size=16)(x).shape[-1]
    64

    Reference:
        - [Wu & He, Group Normalization, ECCV 2018](
          https://arxiv.org/abs/1803.08494)
    """

    def __init__(
        self,
        groups=ops.DEFAULT_GROUPS,
        group_size=None,
        axis=-1,
        epsilon=1e-5,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        activation=None,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Inputs keep their dtype: a float32 tensor under mixed_float16 is
        # normalized from its float32 values (statistics in float32), not
        # cast to float16 first, where values over 65504 would overflow.
        self.autocast = False
        self.supports_masking = True
        groups = ops.check_grouping_arguments(groups, group_size, name=self.name)
        epsilon = ops.check_epsilon(epsilon, name=self.name)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(
                f"Layer '{self.name}': `axis` must be a single int (the channel "
                f"axis, e.g. -1 or 1); received axis={axis!r}."
            )
        ops.check_activation(activation, name=self.name)
        ops.check_implementation(implementation, name=self.name)
        self.groups = groups
        self.group_size = group_size
        self.axis = axis
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.activation = activation
        self.implementation = implementation
        # Resolved in build(); never written back to the constructor arguments,
        # so get_config() is the same before and after build.
        self._channel_axis = None
        self._num_groups = None
        self.gamma = None
        self.beta = None

    @property
    def num_groups(self):
        """The number of groups in use, known once the layer is built."""
        return self._num_groups

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(
                f"Layer '{self.name}' expects inputs of rank >= 2 (batch, ..., "
                f"channels); received input shape {tuple(input_shape)}."
            )
        axis = ops.channel_axis(self.axis, rank, name=self.name)
        channels = input_shape[axis]
        self._num_groups = ops.resolve_groups(
            channels, self.groups, self.group_size, name=self.name
        )
        self._channel_axis = axis
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={axis: channels})
        if self.scale:
            self.gamma = self.add_weight(
                shape=(channels,),
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=(channels,),
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                autocast=False,
            )

    def call(self, inputs, mask=None):
        outputs = ops.group_norm(
            inputs,
            self.gamma,
            self.beta,
            groups=self._num_groups,
            axis=self._channel_axis,
            epsilon=self.epsilon,
            activation=self.activation,
            mask=mask,
            implementation=self.implementation,
            name=self.name,
        )
        return keras.ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {
            "groups": self.groups,
            "group_size": self.group_size,
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": keras.constraints.serialize(self.beta_constraint),
            "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
            "activation": self.activation,
            "implementation": self.implementation,
        }
        return {**super().get_config(), **config}
