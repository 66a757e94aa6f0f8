"""`preprocess_input` for each registered weight set."""

import keras

from zoo.weights import get_entry


def preprocess_input(x, weights, data_format=None):
    """Prepares RGB images with values in [0, 255] for the given weights.

    Applies the registered preprocessing of `weights` (a tag such as
    `"resnet50_gn.in1k_detectron"`): channel order (RGB or BGR), scaling,
    mean and std. For weights whose model normalizes its own inputs (the
    zoo's CIFAR weights) the images are returned unchanged.

    Args:
        x: float array or tensor of RGB images in [0, 255], channels on the
            last axis (or the first non-batch axis for channels-first).
        weights: a registered weights tag.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        A float32 tensor of the same shape.
    """
    prep = get_entry(weights).preprocessing
    x = keras.ops.cast(x, "float32")
    if prep.inside_model:
        return x
    channels_last = (data_format or keras.config.image_data_format()) == "channels_last"
    axis = -1 if channels_last else -3
    if prep.color == "BGR":
        x = keras.ops.flip(x, axis=axis)
    shape = [1] * len(x.shape)
    shape[axis] = 3
    mean = keras.ops.reshape(keras.ops.convert_to_tensor(prep.mean, "float32"), shape)
    std = keras.ops.reshape(keras.ops.convert_to_tensor(prep.std, "float32"), shape)
    return (x / prep.scale - mean) / std
