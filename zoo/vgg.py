"""VGG-16 with a normalization after every convolution (the paper's VGG study).

One builder (`VGG`) and two variants that only pick its arguments:
`vgg16_gn` (ImageNet: 224x224 input, the two 4096-unit fully connected
layers) and `vgg16_cifar_gn` (32x32 input, a single classifier on the
flattened 1x1x512 features). Layer names: `block{b}_conv{i}`,
`block{b}_conv{i}_norm`, `block{b}_pool`, `fc1`, `fc2`, `predictions`.
"""

import keras

from zoo import common
from zoo import weights as weights_lib
from zoo.norms import check_norm
from zoo.norms import norm_layer
from zoo.preprocessing import input_preprocessing

VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def VGG(
    stages=VGG16_STAGES,
    fc_units=(4096, 4096),
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    norm="gn",
    groups=None,
    group_size=None,
    epsilon=1e-5,
    dropout=0.5,
    weight_standardization=None,
    sync_bn=False,
    include_preprocessing=None,
    default_input_shape=(224, 224, 3),
    name="vgg",
):
    """The configurable VGG: `stages` of (filters, convs), each ending in a
    2x2 max pool; with `include_top`, Flatten + `fc_units` dense layers
    (ReLU, dropout) + the classifier. `weight_standardization`: every
    convolution a `keras_gn.WeightStandardizedConv2D` (GN+WS); defaults to
    `None`: as the weights were trained, else `False`. Other arguments as
    in `vgg16_gn`."""
    check_norm(norm)
    if not include_top and input_shape is None and input_tensor is None:
        default_input_shape = (None, None, 3)
    preprocessing = input_preprocessing(name, weights, include_preprocessing)
    inputs, x = common.model_inputs(input_tensor, input_shape, default_input_shape, preprocessing)
    axis = common.channel_axis()
    groups, group_size = weights_lib.grouping(name, weights, groups, group_size)
    standardize = weights_lib.weight_standardization(name, weights, weight_standardization)
    for b, (filters, convs) in enumerate(stages, start=1):
        for i in range(1, convs + 1):
            x = common.padded_conv(x, filters, 3, name=f"block{b}_conv{i}",
                                   weight_standardization=standardize)
            x = norm_layer(norm, filters, groups=groups, group_size=group_size, epsilon=epsilon,
                           axis=axis, sync_bn=sync_bn, name=f"block{b}_conv{i}_norm")(x)
            x = keras.layers.ReLU(name=f"block{b}_conv{i}_relu")(x)
        x = keras.layers.MaxPooling2D(2, 2, name=f"block{b}_pool")(x)

    if include_top:
        x = keras.layers.Flatten(name="flatten")(x)
        for i, units in enumerate(fc_units, start=1):
            x = keras.layers.Dense(units, activation="relu", name=f"fc{i}")(x)
            x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = common.head(x, False, pooling, classes, classifier_activation)
    model = keras.Model(inputs, x, name=name)
    weights_lib.load_model_weights(model, name, weights, include_top)
    return model


_DOC = """Instantiates {title} with Group Normalization after every convolution.

    {body}

    Args:
        {args}
        **kwargs: other `zoo.VGG` arguments: `epsilon` (defaults to `1e-5`),
            `dropout` (of the fully connected layers; defaults to `0.5`),
            `weight_standardization` (`keras_gn.WeightStandardizedConv2D`
            convolutions, GN+WS; defaults to `None`: as the weights were
            trained, else `False`).

    Returns:
        A `keras.Model`.

    Reference:
        - [Wu & He, Group Normalization, ECCV 2018](https://arxiv.org/abs/1803.08494)
        - [Simonyan & Zisserman, Very Deep Convolutional Networks, 2015](
          https://arxiv.org/abs/1409.1556)
    """


def _variant(arch, title, body, classes, size, **config):
    args = common.BUILDER_ARGS_DOC.format(arch=arch, size=size, classes=classes)
    doc = _DOC.format(title=title, body=body, args=args)
    return common.variant(VGG, arch, doc, classes, **config)


vgg16_gn = _variant(
    "vgg16_gn", "VGG-16", "The 13 convolutions of VGG-16 and its two 4096-unit layers.",
    1000, "(224, 224, 3)")
vgg16_cifar_gn = _variant(
    "vgg16_cifar_gn", "the CIFAR VGG-16 (32x32 inputs)",
    "The 13 convolutions of VGG-16, then one classifier on the flattened 1x1x512 features.",
    10, "(32, 32, 3)", fc_units=(), default_input_shape=(32, 32, 3))
