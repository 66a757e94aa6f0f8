"""Pre-activation ResNets (ResNet v2) with Group Normalization: BiT and timm's GN variant.

Big Transfer (BiT, Kolesnikov et al. 2020) is a ResNet v2 whose every
convolution is weight-standardized and whose every norm is GN with 32
groups: the architecture its released weights need, exactly as in the
authors' code (google-research/big_transfer, `bit_tf2/models.py`) and in
timm (`timm/models/resnetv2.py`, `resnetv2_50x1_bit` ...):

- stem: a 7x7/2 convolution of `64 * width_factor` channels (3 pixels of
  zero padding on every side), then 1 pixel of zero padding and a 3x3/2 max
  pool (BiT's "fixed" padding: the pool sees zeros, not -inf, around a
  stem output that is not yet normalized);
- pre-activation bottleneck units: GN+ReLU -> 1x1 conv, GN+ReLU -> 3x3 conv
  carrying the unit's stride (1 pixel of symmetric zero padding), GN+ReLU ->
  1x1 conv to `4 * width` channels, plus the shortcut; the first unit of
  each stage projects the shortcut with a strided 1x1 convolution of the
  pre-activated input;
- weight-standardized convolutions (`keras_gn.WeightStandardizedConv2D`)
  without biases, standardization epsilon 1e-8 (timm's `StdConv2d(eps=1e-8)`
  for BiT; the authors' code adds 1e-10 to the variance, a difference of
  about 1e-5 relative on trained kernels, whose variance is about
  1/fan-in); GN with 32 groups, epsilon 1e-5;
- a final GN + ReLU, global average pooling and the classifier (BiT's
  `head/conv2d`, a 1x1 convolution of the pooled features, is the Dense
  layer `predictions` here).

`resnetv2_50d_gn` is timm's ResNet-50-D v2 with GN and no weight
standardization: a deep stem (three 3x3 convolutions of 32, 32 and 64
channels, the first two followed by GN+ReLU with 32 groups, i.e. one
channel per group, then a 3x3/2 max pool that ignores its padding) and
average-pool shortcuts (2x2/2 average pool, then a 1x1 convolution).

Layer names follow keras.applications' ResNet v2: `conv1_conv` (or
`conv1_{1,2,3}_conv` / `_norm` for the deep stem), `pool1_pool`,
`conv{stage}_block{i}_preact_norm`, `conv{stage}_block{i}_{1,2,3}_conv`,
`conv{stage}_block{i}_{1,2}_norm`, the shortcut `conv{stage}_block1_0_conv`,
`post_norm` and `predictions`; the weight converters rely on them.
"""

import keras

from zoo import common
from zoo import weights as weights_lib
from zoo.norms import check_norm
from zoo.norms import norm_layer
from zoo.preprocessing import input_preprocessing

STAGE_CHANNELS = (256, 512, 1024, 2048)  # output channels per stage at width factor 1
BIT_STANDARDIZATION_EPSILON = 1e-8  # timm's StdConv2d for BiT; the authors' code uses 1e-10


def _stem(x, stem, channels, conv, norm):
    if stem == "bit":
        x = conv(x, channels, 7, 2, "conv1_conv")
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        return keras.layers.MaxPooling2D(3, 2, name="pool1_pool")(x)
    if stem == "deep":
        for i, width in enumerate((channels // 2, channels // 2, channels), start=1):
            x = conv(x, width, 3, 2 if i == 1 else 1, f"conv1_{i}_conv")
            if i < 3:
                x = keras.layers.ReLU(name=f"conv1_{i}_relu")(norm(x, width, f"conv1_{i}_norm"))
        # PyTorch's MaxPool2d(3, 2, padding=1) ignores its padding: a
        # stride-1 "same" pool (TF pads 1 on each side for a 3x3 window and
        # ignores it too) keeps every window; the 1x1/2 pool then takes
        # every second one, the windows PyTorch's stride 2 keeps.
        x = keras.layers.MaxPooling2D(3, 1, padding="same", name="pool1_pool")(x)
        return keras.layers.MaxPooling2D(1, 2, name="pool1_subsample")(x)
    raise ValueError(f"stem={stem!r} is not one of 'bit', 'deep'.")


def _unit(x, width, out_channels, strides, project, avg_down, name, conv, norm):
    """A pre-activation bottleneck unit; `width` is the bottleneck width."""
    preact = norm(x, x.shape[common.channel_axis()], f"{name}_preact_norm")
    preact = keras.layers.ReLU(name=f"{name}_preact_relu")(preact)
    shortcut = x
    if project:
        if avg_down and strides > 1:
            # timm's DownsampleAvg: AvgPool2d(2, 2, ceil_mode=True,
            # count_include_pad=False); TF's "same" average pool is the same
            # windows, the partial last one averaged over its valid pixels.
            pooled = keras.layers.AveragePooling2D(2, strides, padding="same", name=f"{name}_0_pool")(preact)
            shortcut = conv(pooled, out_channels, 1, 1, f"{name}_0_conv")
        else:
            shortcut = conv(preact, out_channels, 1, strides, f"{name}_0_conv")
    y = conv(preact, width, 1, 1, f"{name}_1_conv")
    y = keras.layers.ReLU(name=f"{name}_1_relu")(norm(y, width, f"{name}_1_norm"))
    y = conv(y, width, 3, strides, f"{name}_2_conv")
    y = keras.layers.ReLU(name=f"{name}_2_relu")(norm(y, width, f"{name}_2_norm"))
    y = conv(y, out_channels, 1, 1, f"{name}_3_conv")
    return keras.layers.Add(name=f"{name}_out")([shortcut, y])


def ResNetV2(
    stage_blocks,
    width_factor=1,
    stem="bit",
    avg_down=False,
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
    weight_standardization=None,
    standardization_epsilon=BIT_STANDARDIZATION_EPSILON,
    include_preprocessing=None,
    name="resnetv2",
):
    """The configurable pre-activation ResNet; the named variants only pick
    its arguments.

    Args:
        stage_blocks: units per stage, e.g. `(3, 4, 6, 3)` for a ResNet-50.
        width_factor: int, channel multiplier of every layer (BiT's `x3` in
            R50x3). Defaults to `1`.
        stem: `"bit"` (7x7/2 conv, zero padding, 3x3/2 max pool) or
            `"deep"` (three 3x3 convs, 3x3/2 max pool). Defaults to
            `"bit"`.
        avg_down: bool, strided shortcuts as a 2x2/2 average pool and a 1x1
            conv (ResNet-D) instead of a strided 1x1 conv. Defaults to
            `False`.
        include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, norm, groups, group_size,
        include_preprocessing: see the named variants.
        epsilon: norm epsilon. Defaults to `1e-5`.
        weight_standardization: bool, every convolution a
            `keras_gn.WeightStandardizedConv2D`. Defaults to `None`: as the
            weights were trained, else `False` (the BiT variants pass
            `True`).
        standardization_epsilon: float, added to each kernel's variance
            when standardizing. Defaults to `1e-8` (timm's, for BiT).
        name: model name, and the architecture name weights are looked up
            under.
    """
    check_norm(norm)
    default_shape = (224, 224, 3)
    if not include_top and input_shape is None and input_tensor is None:
        default_shape = (None, None, 3)
    preprocessing = input_preprocessing(name, weights, include_preprocessing)
    inputs, x = common.model_inputs(input_tensor, input_shape, default_shape, preprocessing)
    axis = common.channel_axis()
    groups, group_size = weights_lib.grouping(name, weights, groups, group_size)
    standardize = weights_lib.weight_standardization(name, weights, weight_standardization)

    def conv(y, filters, kernel_size, strides, layer_name):
        return common.padded_conv(y, filters, kernel_size, strides, name=layer_name,
                                  weight_standardization=standardize,
                                  standardization_epsilon=standardization_epsilon)

    def norm_(y, channels, layer_name):
        return norm_layer(norm, channels, groups=groups, group_size=group_size, epsilon=epsilon,
                          axis=axis, min_group_size=1, name=layer_name)(y)

    x = _stem(x, stem, 64 * width_factor, conv, norm_)
    for stage, (blocks, channels) in enumerate(zip(stage_blocks, STAGE_CHANNELS)):
        out_channels = channels * width_factor
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _unit(x, out_channels // 4, out_channels, strides, block == 0, avg_down,
                      f"conv{stage + 2}_block{block + 1}", conv, norm_)
    x = norm_(x, x.shape[axis], "post_norm")
    x = keras.layers.ReLU(name="post_relu")(x)

    outputs = common.head(x, include_top, pooling, classes, classifier_activation)
    model = keras.Model(inputs, outputs, name=name)
    weights_lib.load_model_weights(model, name, weights, include_top)
    return model


def _with_defaults(build, **defaults):
    """`build` with `defaults` that the caller's keyword arguments override."""

    def build_with_defaults(**kwargs):
        return build(**{**defaults, **kwargs})

    return build_with_defaults


_DOC = """Instantiates {title}.

    {body}

    Args:
        {args}
        **kwargs: other `zoo.ResNetV2` arguments: `epsilon` (GN epsilon;
            defaults to `1e-5`), `weight_standardization` (defaults to
            `{ws}`), `standardization_epsilon` (defaults to `1e-8`, timm's).

    Returns:
        A `keras.Model`.

    Reference:
        {references}
    """

_BIT_REFERENCES = """- [Kolesnikov et al., Big Transfer (BiT): General Visual Representation
          Learning, ECCV 2020](https://arxiv.org/abs/1912.11370)
        - [He et al., Identity Mappings in Deep Residual Networks, ECCV 2016](
          https://arxiv.org/abs/1603.05027)"""

_GN_REFERENCES = """- [Wu & He, Group Normalization, ECCV 2018](https://arxiv.org/abs/1803.08494)
        - [He et al., Bag of Tricks for Image Classification (ResNet-D), CVPR
          2019](https://arxiv.org/abs/1812.01187)"""

# Every named ResNetV2: its `ResNetV2` arguments (the converters read these too).
ARCHS = {
    **{
        f"resnetv2_{depth}x{wf}_bit": dict(stage_blocks=blocks, width_factor=wf, stem="bit")
        for depth, wf, blocks in ((50, 1, (3, 4, 6, 3)), (50, 3, (3, 4, 6, 3)), (101, 1, (3, 4, 23, 3)),
                                  (101, 3, (3, 4, 23, 3)), (152, 2, (3, 8, 36, 3)), (152, 4, (3, 8, 36, 3)))
    },
    "resnetv2_50d_gn": dict(stage_blocks=(3, 4, 6, 3), width_factor=1, stem="deep", avg_down=True),
}


def _variant(arch):
    config = ARCHS[arch]
    args = common.BUILDER_ARGS_DOC.format(arch=arch, size="(224, 224, 3)", classes=1000)
    if config["stem"] == "bit":
        depth, wf = arch.split("_")[1].split("x")
        title = f"BiT-R{depth}x{wf} (Big Transfer ResNet-{depth}v2, width x{wf})"
        body = ("A pre-activation ResNet with GN (32 groups) and weight-standardized "
                "convolutions, as the BiT weights were trained. Any input size; BiT's "
                "weights were pre-trained at 224 px and fine-tuned at 128-480 px "
                "(BiT-HyperRule).")
        build, ws, references = _with_defaults(ResNetV2, weight_standardization=True), "True", _BIT_REFERENCES
    else:
        title = "ResNet-50-D v2 with Group Normalization (timm's `resnetv2_50d_gn`)"
        body = ("A pre-activation ResNet-50 with a deep stem, average-pool shortcuts and "
                "GN (32 groups) after every convolution, no weight standardization.")
        build, ws, references = ResNetV2, "None: as the weights were trained, else False", _GN_REFERENCES
    doc = _DOC.format(title=title, body=body, args=args, ws=ws, references=references)
    return common.variant(build, arch, doc, 1000, **config)


resnetv2_50x1_bit = _variant("resnetv2_50x1_bit")
resnetv2_50x3_bit = _variant("resnetv2_50x3_bit")
resnetv2_101x1_bit = _variant("resnetv2_101x1_bit")
resnetv2_101x3_bit = _variant("resnetv2_101x3_bit")
resnetv2_152x2_bit = _variant("resnetv2_152x2_bit")
resnetv2_152x4_bit = _variant("resnetv2_152x4_bit")
resnetv2_50d_gn = _variant("resnetv2_50d_gn")
