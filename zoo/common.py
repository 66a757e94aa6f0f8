"""What every zoo builder shares: inputs, explicit padding, the head, weights."""

import keras

import keras_gn


def channel_axis():
    return -1 if keras.config.image_data_format() == "channels_last" else 1


def model_inputs(input_tensor, input_shape, default_shape, preprocessing=None):
    """`(inputs, x)` as keras.applications builders take them.

    `input_shape` is channels-last or channels-first like the global image
    data format; `default_shape` is channels-last. `preprocessing`: an
    optional layer applied to the input (`x` is its output).
    """
    if input_shape is None:
        input_shape = default_shape
        if channel_axis() == 1:
            input_shape = (default_shape[-1],) + tuple(default_shape[:-1])
    if input_tensor is None:
        inputs = x = keras.Input(shape=input_shape)
    else:
        if not keras.backend.is_keras_tensor(input_tensor):
            input_tensor = keras.Input(tensor=input_tensor, shape=input_shape)
        inputs, x = keras.utils.get_source_inputs(input_tensor), input_tensor
    return inputs, (preprocessing(x) if preprocessing is not None else x)


def padded_conv(x, filters, kernel_size, strides=1, name=None, weight_standardization=False,
                standardization_epsilon=None):
    """A convolution with PyTorch/Caffe padding: `kernel_size // 2` on every side.

    Keras `padding="same"` pads stride-2 convolutions asymmetrically (more
    at the bottom/right), which silently breaks weights trained with
    symmetric padding; explicit ZeroPadding2D + "valid" matches them.
    `weight_standardization`: a `keras_gn.WeightStandardizedConv2D`
    instead of a `Conv2D` (same name and kernel shape), with
    `standardization_epsilon` if given (else the layer's default).
    """
    pad = kernel_size // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    kwargs = {}
    if weight_standardization:
        conv = keras_gn.WeightStandardizedConv2D
        if standardization_epsilon is not None:
            kwargs["standardization_epsilon"] = standardization_epsilon
    else:
        conv = keras.layers.Conv2D
    return conv(
        filters, kernel_size, strides, padding="valid", use_bias=False,
        kernel_initializer=keras.initializers.HeNormal(), name=name, **kwargs,
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


def variant(build, arch, doc, classes, **config):
    """A keras.applications-style builder named `arch` that calls `build`
    (the family's configurable builder) with `config` fixed: each named
    variant only picks arguments. Extra keyword arguments go to `build`."""

    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=classes,
        classifier_activation="softmax",
        norm="gn",
        groups=None,
        group_size=None,
        include_preprocessing=None,
        name=arch,
        **kwargs,
    ):
        return build(
            include_top=include_top, weights=weights, input_tensor=input_tensor,
            input_shape=input_shape, pooling=pooling, classes=classes,
            classifier_activation=classifier_activation, norm=norm, groups=groups,
            group_size=group_size, include_preprocessing=include_preprocessing, name=name,
            **config, **kwargs,
        )

    builder.__name__ = builder.__qualname__ = arch
    builder.__doc__ = doc
    return builder


BUILDER_ARGS_DOC = """include_top: whether to include the classifier. Defaults to `True`.
        weights: `None` (random initialization), a weights tag of
            `zoo.list_weights("{arch}")`, `"imagenet"` / `"cifar10"` (the
            default tag for that dataset), or the path of a `.weights.h5`
            file saved from this builder. Defaults to `None`.
        input_tensor: optional Keras tensor to use as the model input.
        input_shape: optional input shape, e.g. `{size}`; channels-last or
            channels-first like `keras.config.image_data_format()`.
        pooling: with `include_top=False`: `None` (4-D features), `"avg"` or
            `"max"` global pooling. Defaults to `None`.
        classes: number of classes, with `include_top=True`. Defaults to
            `{classes}`.
        classifier_activation: activation of the classifier (`None` for
            logits). Defaults to `"softmax"`.
        norm: `"gn"` (Group Normalization) or `"bn"` (BatchNormalization),
            same architecture otherwise. Defaults to `"gn"`.
        groups: GN groups per layer; where they do not divide a layer's
            channels, the coarser grouping of
            `keras_gn.convert.choose_groups`. Defaults to `None`: the
            grouping the weights were trained with (the zoo's CIFAR-10
            weights: 2 groups), else 32 groups as in the paper. A grouping
            that differs from the weights' is refused.
        group_size: GN channels per group instead of `groups`. Defaults to
            `None`.
        include_preprocessing: whether the model starts with a
            `zoo.Preprocessing` layer holding the weights' normalization,
            so that it takes RGB values in [0, 255]. `None` follows the
            weights: `True` for weights trained that way (the zoo's
            `"cifar10"` weights), else `False`. `True` with other
            registered weights adds their `preprocess_input` as a layer.
            Defaults to `None`.
        name: model name. Defaults to `"{arch}"`."""
