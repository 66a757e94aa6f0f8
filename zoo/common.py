"""What every zoo builder shares: inputs, explicit padding, the head, weights."""

import keras


def channel_axis():
    return -1 if keras.config.image_data_format() == "channels_last" else 1


def model_inputs(input_tensor, input_shape, default_shape):
    """`(inputs, x)` as keras.applications builders take them.

    `input_shape` is channels-last or channels-first like the global image
    data format; `default_shape` is channels-last.
    """
    if input_shape is None:
        input_shape = default_shape
        if channel_axis() == 1:
            input_shape = (default_shape[-1],) + tuple(default_shape[:-1])
    if input_tensor is None:
        x = keras.Input(shape=input_shape)
        return x, x
    if not keras.backend.is_keras_tensor(input_tensor):
        input_tensor = keras.Input(tensor=input_tensor, shape=input_shape)
    return keras.utils.get_source_inputs(input_tensor), input_tensor


def padded_conv(x, filters, kernel_size, strides=1, name=None):
    """A convolution with PyTorch/Caffe padding: `kernel_size // 2` on every side.

    Keras `padding="same"` pads stride-2 convolutions asymmetrically (more
    at the bottom/right), which silently breaks weights trained with
    symmetric padding; explicit ZeroPadding2D + "valid" matches them.
    """
    pad = kernel_size // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters, kernel_size, strides, padding="valid", use_bias=False,
        kernel_initializer=keras.initializers.HeNormal(), name=name,
    )(x)


def head(x, include_top, pooling, classes, classifier_activation):
    """keras.applications' head: pooled classifier, or optional pooling."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if pooling is not None:
        raise ValueError(f"pooling={pooling!r} is not one of None, 'avg', 'max'.")
    return x
