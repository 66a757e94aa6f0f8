"""ResNets with Group Normalization: one configurable builder, named variants.

The architecture is the one the paper's authors trained their GN ResNets
with (Detectron, tensorpack), so their released weights load:

- ResNet v1; bottleneck blocks carry the stride on the 3x3 convolution
  (Detectron `STRIDE_1X1: False`, torchvision/timm "v1.5");
- projection shortcuts (1x1 conv + norm) where the shape changes;
- Caffe/PyTorch symmetric padding made explicit (`ZeroPadding2D`), for the
  7x7 stem, the 3x3 max pool and every 3x3 convolution;
- no convolution biases; G=32 groups, epsilon 1e-5;
- `zero_init_last`: gamma of the last norm of each residual branch starts at
  0, so each block starts as the identity (Goyal et al. 2017; the paper and
  tensorpack initialize GN this way);
- optional Weight Standardization of every convolution (GN+WS, Qiao et al.
  2019; BiT), off by default as in the paper.

CIFAR variants (He et al. 2016, section 4.2): a 3x3 stem and 3 stages of
16/32/64 channels with `n` basic blocks each (ResNet-6n+2); projection
shortcuts ("option B") where the shape changes.

Layer names follow keras.applications: `conv1_conv`, `conv1_norm`,
`conv{stage}_block{i}_{1,2,3}_conv` / `_norm`, the shortcut
`conv{stage}_block1_0_conv` / `_norm`, and `predictions`; the weight
converters rely on them.
"""

import keras

from zoo import common
from zoo import weights as weights_lib
from zoo.norms import check_norm
from zoo.norms import norm_layer
from zoo.preprocessing import input_preprocessing


def _block(x, filters, strides, bottleneck, zero_init_last, name, norm_kwargs, weight_standardization):
    """A residual block; `filters` is the bottleneck width (output 4x)."""
    axis = common.channel_axis()
    out_channels = 4 * filters if bottleneck else filters

    def conv(y, channels, kernel_size, suffix, strides=1):
        return common.padded_conv(y, channels, kernel_size, strides, name=f"{name}_{suffix}_conv",
                                  weight_standardization=weight_standardization)

    def norm(y, channels, suffix, zero_init=False):
        return norm_layer(channels=channels, zero_init=zero_init, axis=axis,
                          name=f"{name}_{suffix}_norm", **norm_kwargs)(y)

    shortcut = x
    if strides != 1 or x.shape[axis] != out_channels:
        shortcut = conv(x, out_channels, 1, "0", strides)
        shortcut = norm(shortcut, out_channels, "0")

    if bottleneck:
        y = conv(x, filters, 1, "1")
        y = keras.layers.ReLU(name=f"{name}_1_relu")(norm(y, filters, "1"))
        y = conv(y, filters, 3, "2", strides)
        y = keras.layers.ReLU(name=f"{name}_2_relu")(norm(y, filters, "2"))
        y = conv(y, out_channels, 1, "3")
        y = norm(y, out_channels, "3", zero_init=zero_init_last)
    else:
        y = conv(x, filters, 3, "1", strides)
        y = keras.layers.ReLU(name=f"{name}_1_relu")(norm(y, filters, "1"))
        y = conv(y, filters, 3, "2")
        y = norm(y, filters, "2", zero_init=zero_init_last)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def ResNet(
    stage_blocks,
    stage_widths=(64, 128, 256, 512),
    bottleneck=True,
    stem="imagenet",
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
    zero_init_last=True,
    weight_standardization=None,
    sync_bn=False,
    include_preprocessing=None,
    name="resnet",
):
    """The configurable ResNet; the named variants only pick its arguments.

    Args:
        stage_blocks: blocks per stage, e.g. `(3, 4, 6, 3)` for ResNet-50.
        stage_widths: bottleneck width (or basic-block width) per stage.
        bottleneck: bool, bottleneck (1x1-3x3-1x1) or basic (3x3-3x3) blocks.
        stem: `"imagenet"` (7x7/2 conv + 3x3/2 max pool) or `"cifar"` (3x3
            conv).
        include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation: as in `keras.applications`; see the named
            variants.
        norm: `"gn"` or `"bn"`. Defaults to `"gn"`.
        groups: GN groups (see `zoo.norms.norm_layer`). Defaults to `None`:
            the groups the weights were trained with, else `32`.
        group_size: GN channels per group instead of `groups`.
        epsilon: norm epsilon. Defaults to `1e-5`.
        zero_init_last: bool, zero-init the last gamma of each residual
            branch. Defaults to `True`.
        weight_standardization: bool, every convolution a
            `keras_gn.WeightStandardizedConv2D` (GN+WS). Defaults to
            `None`: as the weights were trained, else `False`.
        sync_bn: bool, with `norm="bn"`: synchronize BN statistics across
            replicas. Defaults to `False` (per replica, as in the paper).
        include_preprocessing: see the named variants. Defaults to `None`
            (as the weights were trained).
        name: model name, and the architecture name weights are looked up
            under.
    """
    check_norm(norm)
    default_shape = (32, 32, 3) if stem == "cifar" else (224, 224, 3)
    if not include_top and input_shape is None and input_tensor is None:
        default_shape = (None, None, 3)
    preprocessing = input_preprocessing(name, weights, include_preprocessing)
    inputs, x = common.model_inputs(input_tensor, input_shape, default_shape, preprocessing)
    axis = common.channel_axis()
    groups, group_size = weights_lib.grouping(name, weights, groups, group_size)
    norm_kwargs = dict(norm=norm, groups=groups, group_size=group_size, epsilon=epsilon,
                       sync_bn=sync_bn)
    weight_standardization = weights_lib.weight_standardization(name, weights, weight_standardization)

    if stem == "imagenet":
        x = common.padded_conv(x, 64, 7, 2, name="conv1_conv", weight_standardization=weight_standardization)
        x = norm_layer(channels=64, axis=axis, name="conv1_norm", **norm_kwargs)(x)
        x = keras.layers.ReLU(name="conv1_relu")(x)
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, 2, name="pool1_pool")(x)
    elif stem == "cifar":
        x = common.padded_conv(x, stage_widths[0], 3, name="conv1_conv",
                               weight_standardization=weight_standardization)
        x = norm_layer(channels=stage_widths[0], axis=axis, name="conv1_norm", **norm_kwargs)(x)
        x = keras.layers.ReLU(name="conv1_relu")(x)
    else:
        raise ValueError(f"stem={stem!r} is not one of 'imagenet', 'cifar'.")

    for stage, (blocks, width) in enumerate(zip(stage_blocks, stage_widths)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _block(x, width, strides, bottleneck, zero_init_last,
                       f"conv{stage + 2}_block{block + 1}", norm_kwargs, weight_standardization)

    outputs = common.head(x, include_top, pooling, classes, classifier_activation)
    model = keras.Model(inputs, outputs, name=name)
    weights_lib.load_model_weights(model, name, weights, include_top)
    return model


def _variant(arch):
    config = dict(ARCHS[arch])
    title, classes, size = config.pop("title"), config.pop("classes"), config.pop("size")
    args = common.BUILDER_ARGS_DOC.format(arch=arch, size=size, classes=classes)
    return common.variant(ResNet, arch, _DOC.format(title=title, args=args), classes, **config)


_DOC = """Instantiates {title} with Group Normalization.

    Args:
        {args}
        **kwargs: other `zoo.ResNet` arguments: `zero_init_last` (zero-init
            the last gamma of each residual branch; defaults to `True`),
            `epsilon` (defaults to `1e-5`), `weight_standardization`
            (`keras_gn.WeightStandardizedConv2D` convolutions, GN+WS;
            defaults to `None`: as the weights were trained, else `False`).

    Returns:
        A `keras.Model`.

    Reference:
        - [Wu & He, Group Normalization, ECCV 2018](https://arxiv.org/abs/1803.08494)
        - [He et al., Deep Residual Learning, CVPR 2016](https://arxiv.org/abs/1512.03385)
    """

_IMAGENET = dict(classes=1000, size="(224, 224, 3)")
_CIFAR = dict(classes=10, size="(32, 32, 3)", stem="cifar", stage_widths=(16, 32, 64), bottleneck=False)

# Every named ResNet: its `ResNet` arguments (the converters read these too).
ARCHS = {
    "resnet18_gn": dict(_IMAGENET, title="ResNet-18", stage_blocks=(2, 2, 2, 2), bottleneck=False),
    "resnet34_gn": dict(_IMAGENET, title="ResNet-34", stage_blocks=(3, 4, 6, 3), bottleneck=False),
    "resnet50_gn": dict(_IMAGENET, title="ResNet-50", stage_blocks=(3, 4, 6, 3)),
    "resnet101_gn": dict(_IMAGENET, title="ResNet-101", stage_blocks=(3, 4, 23, 3)),
    "resnet152_gn": dict(_IMAGENET, title="ResNet-152", stage_blocks=(3, 8, 36, 3)),
    **{
        f"resnet{depth}_gn": dict(_CIFAR, title=f"the CIFAR ResNet-{depth}",
                                  stage_blocks=((depth - 2) // 6,) * 3)
        for depth in (20, 32, 56, 110)
    },
}

resnet18_gn = _variant("resnet18_gn")
resnet34_gn = _variant("resnet34_gn")
resnet50_gn = _variant("resnet50_gn")
resnet101_gn = _variant("resnet101_gn")
resnet152_gn = _variant("resnet152_gn")
resnet20_gn = _variant("resnet20_gn")
resnet32_gn = _variant("resnet32_gn")
resnet56_gn = _variant("resnet56_gn")
resnet110_gn = _variant("resnet110_gn")
