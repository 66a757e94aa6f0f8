"""`freeze_bn`: the paper's BN* baseline, BatchNormalization frozen to an affine."""

import keras

from keras_gn.layers.channel_affine import ChannelAffine
from keras_gn.rewrite import is_batch_norm
from keras_gn.rewrite import rewrite_layers


def freeze_bn(model, trainable=False):
    """Returns a copy of `model` with every BatchNormalization frozen.

    Each BatchNormalization becomes a `ChannelAffine` layer computing, per
    channel, `x * scale + offset` with `scale = gamma / sqrt(moving_variance +
    epsilon)` and `offset = beta - moving_mean * scale`: exactly the
    BatchNormalization's inference-mode output, now independent of the batch
    and of the `training` flag. This is the "BN*" baseline of the paper's
    detection and segmentation experiments (frozen BN statistics for
    fine-tuning with small batches). Every other layer keeps its weights;
    nested Functional and Sequential models are frozen recursively.

    Args:
        model: a built Functional or Sequential Keras model.
        trainable: bool, whether the affine `scale` and `offset` stay
            trainable (statistics are frozen either way). Defaults to `False`.

    Returns:
        The new model.

    Example:

    ```python
    model = keras.applications.ResNet50(weights="imagenet")
    frozen = keras_gn.freeze_bn(model)
    ```
    """

    def make_replacement(bn):
        return ChannelAffine(
            axis=bn.axis, name=bn.name, dtype=bn.dtype_policy, trainable=trainable
        )

    def load_replacement(bn, affine):
        scale = keras.ops.rsqrt(
            keras.ops.cast(bn.moving_variance, "float32") + bn.epsilon
        )
        if bn.scale:
            scale = scale * bn.gamma
        offset = -keras.ops.cast(bn.moving_mean, "float32") * scale
        if bn.center:
            offset = offset + bn.beta
        affine.scale.assign(scale)
        affine.offset.assign(offset)

    new_model, _, _ = rewrite_layers(
        model, is_batch_norm, make_replacement, load_replacement, "freeze_bn"
    )
    return new_model
