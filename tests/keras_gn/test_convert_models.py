"""`convert_bn_to_gn` on every keras-cv and keras-hub image backbone and task
that builds offline (random weights, explicit constructor arguments: presets
and the alias classes download from Kaggle).

For each model: convert it, check that no BatchNormalization is left (inside
custom layers too) and that the report lists each one, run one training step,
then reload it (`.keras`, or the weights recipe where a `.keras` round trip
cannot work; see `RELOAD`).
"""

import keras
import numpy as np
import pytest

import keras_gn

pytestmark = pytest.mark.slow

SIZE = 64  # input height and width
SEED = 0

# How each converted model is reloaded: "keras" (`save` to `.keras`, then
# `keras.saving.load_model`), or "weights: <reason>" (`save_weights`; build the
# original again with the same seed, convert it the same way, `load_weights`).
CUSTOM = "weights: BN inside {} (a custom layer whose config rebuilds BN): Save its weights"
# The original model saves as its own class, rebuilt from its constructor
# arguments; the converted copy is a plain keras.Model (nested backbones too),
# saved layer by layer, which needs every layer's own config to round-trip.
THIRD_PARTY = ("weights: {}.from_config(get_config()) fails (a keras-cv/keras-hub bug), so a "
               "plain keras.Model holding it does not reload, converted or not")
RELOAD = {
    # keras-cv
    "cv.ResNetBackbone-50": "keras",
    "cv.ResNetV2Backbone-50": "keras",
    "cv.DenseNetBackbone-121": "keras",
    "cv.EfficientNetV1Backbone-B0": "keras",
    "cv.EfficientNetV2Backbone-B0": CUSTOM.format("FusedMBConvBlock, MBConvBlock"),
    "cv.EfficientNetLiteBackbone-B0": "keras",
    "cv.CSPDarkNetBackbone-tiny": CUSTOM.format("CrossStagePartial"),
    "cv.CSPDarkNetBackbone-L": CUSTOM.format("CrossStagePartial"),
    "cv.MobileNetV3Backbone-Small": THIRD_PARTY.format("HardSigmoidActivation (its __init__ takes no name)"),
    "cv.MiTBackbone-B0": THIRD_PARTY.format("HierarchicalTransformerEncoder"),
    "cv.YOLOV8Backbone-S": "keras",
    "cv.DeepLabV3Plus-ResNetV2-50": CUSTOM.format("SpatialPyramidPooling"),
    "cv.SegFormer-MiT-B0": THIRD_PARTY.format("HierarchicalTransformerEncoder"),
    "cv.RetinaNet-ResNet-50": "keras",
    "cv.YOLOV8Detector-S": "keras",
    "cv.BASNet-ResNetV2-50/4": "keras",
    "cv.ImageClassifier-ResNetV2-50": "keras",
    # keras-hub
    "hub.ResNetBackbone-50": "keras",
    "hub.ResNetBackbone-v2-50": "keras",
    "hub.ResNetBackbone-vd-50": "keras",
    "hub.CSPNetBackbone-darknet53": "keras",
    "hub.EfficientNetBackbone-B0": "keras",
    "hub.EfficientNetBackbone-V2-B0": CUSTOM.format("FusedMBConvBlock, MBConvBlock"),
    "hub.MobileNetBackbone-V3-Small": CUSTOM.format("DepthwiseConvBlock, InvertedResidualBlock, ConvBnActBlock"),
    "hub.DenseNetBackbone-121": "keras",
    "hub.XceptionBackbone": "keras",
    "hub.HGNetV2Backbone-B0": CUSTOM.format("HGNetV2Embeddings, HGNetV2Encoder"),
    "hub.ResNetImageClassifier-50": "keras",
    "hub.DeepLabV3ImageSegmenter-ResNet-50": CUSTOM.format("SpatialPyramidPooling"),
    "hub.RetinaNetObjectDetector-ResNet-50": CUSTOM.format("FeaturePyramid (use_fpn_batch_norm=True)"),
    "hub.BASNetImageSegmenter-ResNet-34": "keras",
    # The unconverted task reloads (its MiTBackbone is saved by class), but
    # the copy's MiT is a plain keras.Model: see THIRD_PARTY.
    "hub.SegFormerImageSegmenter-MiT-B0": THIRD_PARTY.format("HierarchicalTransformerEncoder"),
    "hub.DFineObjectDetector-HGNetV2-B0": CUSTOM.format("HGNetV2Embeddings, HGNetV2Encoder, DFineHybridEncoder"),
}



def _cv():
    return pytest.importorskip("keras_cv").models


def _hub():
    return pytest.importorskip("keras_hub").models


# ---------------------------------------------------------------- keras-cv

RESNET50 = dict(stackwise_filters=[64, 128, 256, 512], stackwise_blocks=[3, 4, 6, 3],
                stackwise_strides=[1, 2, 2, 2])


def cv_resnet_v2_50(**kwargs):
    return _cv().ResNetV2Backbone(**RESNET50, block_type="block", include_rescaling=False, **kwargs)


def cv_mit_b0(**kwargs):
    return _cv().MiTBackbone(depths=[2, 2, 2, 2], embedding_dims=[32, 64, 160, 256],
                             include_rescaling=False, input_shape=(SIZE, SIZE, 3), **kwargs)


def cv_yolo_v8_s():
    return _cv().YOLOV8Backbone(stackwise_channels=[64, 128, 256, 512], stackwise_depth=[1, 2, 2, 1],
                                include_rescaling=False, input_shape=(SIZE, SIZE, 3))


EFFICIENTNET_V1_B0 = dict(
    width_coefficient=1.0, depth_coefficient=1.0,
    stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3], stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1],
    stackwise_input_filters=[32, 16, 24, 40, 80, 112, 192],
    stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320],
    stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6], stackwise_strides=[1, 2, 2, 2, 1, 2, 1])

MOBILENET_V3_SMALL = dict(
    stackwise_expansion=[1, 72.0 / 16, 88.0 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
    stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
    stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
    stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
    stackwise_se_ratio=[0.25, None, None] + [0.25] * 8,
    stackwise_activation=["relu"] * 3 + ["hard_swish"] * 8)

KERAS_CV = {
    "cv.ResNetBackbone-50": lambda: _cv().ResNetBackbone(
        **RESNET50, block_type="block", include_rescaling=True, input_shape=(SIZE, SIZE, 3)),
    "cv.ResNetV2Backbone-50": lambda: cv_resnet_v2_50(input_shape=(SIZE, SIZE, 3)),
    "cv.DenseNetBackbone-121": lambda: _cv().DenseNetBackbone(
        stackwise_num_repeats=[6, 12, 24, 16], include_rescaling=False, input_shape=(SIZE, SIZE, 3)),
    "cv.EfficientNetV1Backbone-B0": lambda: _cv().EfficientNetV1Backbone(
        **EFFICIENTNET_V1_B0, stackwise_squeeze_and_excite_ratios=[0.25] * 7,
        include_rescaling=False, input_shape=(SIZE, SIZE, 3)),
    "cv.EfficientNetV2Backbone-B0": lambda: _cv().EfficientNetV2Backbone(
        width_coefficient=1.0, depth_coefficient=1.0, stackwise_kernel_sizes=[3] * 6,
        stackwise_num_repeats=[1, 2, 2, 3, 5, 8], stackwise_input_filters=[32, 16, 32, 48, 96, 112],
        stackwise_output_filters=[16, 32, 48, 96, 112, 192], stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6],
        stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25, 0.25, 0.25], stackwise_strides=[1, 2, 2, 2, 1, 2],
        stackwise_conv_types=["fused"] * 3 + ["unfused"] * 3, include_rescaling=False,
        input_shape=(SIZE, SIZE, 3)),
    "cv.EfficientNetLiteBackbone-B0": lambda: _cv().EfficientNetLiteBackbone(
        **EFFICIENTNET_V1_B0, include_rescaling=False, input_shape=(SIZE, SIZE, 3)),
    "cv.CSPDarkNetBackbone-tiny": lambda: _cv().CSPDarkNetBackbone(
        stackwise_channels=[48, 96, 192, 384], stackwise_depth=[1, 3, 3, 1], include_rescaling=False,
        input_shape=(SIZE, SIZE, 3)),
    "cv.CSPDarkNetBackbone-L": lambda: _cv().CSPDarkNetBackbone(
        stackwise_channels=[128, 256, 512, 1024], stackwise_depth=[3, 9, 9, 3], include_rescaling=False,
        input_shape=(SIZE, SIZE, 3)),
    "cv.MobileNetV3Backbone-Small": lambda: _cv().MobileNetV3Backbone(
        **MOBILENET_V3_SMALL, include_rescaling=False, input_shape=(SIZE, SIZE, 3)),
    "cv.MiTBackbone-B0": lambda: cv_mit_b0(),
    "cv.YOLOV8Backbone-S": cv_yolo_v8_s,
    "cv.DeepLabV3Plus-ResNetV2-50": lambda: _cv().DeepLabV3Plus(
        backbone=cv_resnet_v2_50(input_shape=(SIZE, SIZE, 3)), num_classes=3),
    "cv.SegFormer-MiT-B0": lambda: _cv().SegFormer(backbone=cv_mit_b0(), num_classes=3),
    "cv.RetinaNet-ResNet-50": lambda: _cv().RetinaNet(
        backbone=_cv().ResNetBackbone(**RESNET50, block_type="block", include_rescaling=False,
                                      input_shape=(SIZE, SIZE, 3)),
        num_classes=3, bounding_box_format="xywh"),
    "cv.YOLOV8Detector-S": lambda: _cv().YOLOV8Detector(
        backbone=cv_yolo_v8_s(), num_classes=3, bounding_box_format="xywh", fpn_depth=1),
    # BASNet's documented backbones are ResNet-18/34 (basic blocks), but with
    # them it does not build under Keras 3 (the sub-model it cuts out of the
    # first stage starts after the stage's identity shortcut: "Output ... is
    # not connected to `inputs`"). Bottleneck blocks build; a quarter of
    # ResNet-50's widths gives ResNet-34's stage outputs (64 to 512 channels),
    # since BASNet's extra stages convolve the last one's channels 3x3 (with
    # 2048, 560M parameters).
    "cv.BASNet-ResNetV2-50/4": lambda: _cv().BASNet(
        backbone=_cv().ResNetV2Backbone(
            stackwise_filters=[16, 32, 64, 128], stackwise_blocks=[3, 4, 6, 3], stackwise_strides=[1, 2, 2, 2],
            block_type="block", include_rescaling=False),
        num_classes=1, input_shape=(SIZE, SIZE, 3)),
    "cv.ImageClassifier-ResNetV2-50": lambda: _cv().ImageClassifier(
        backbone=cv_resnet_v2_50(input_shape=(SIZE, SIZE, 3)), num_classes=10),
}

# ---------------------------------------------------------------- keras-hub

HUB_RESNET50 = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                    stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
                    stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block")


def hub_resnet50(image_shape=(SIZE, SIZE, 3), **kwargs):
    return _hub().ResNetBackbone(**{**HUB_RESNET50, **kwargs}, image_shape=image_shape)


# keras_hub/src/utils/timm/convert_mobilenet.py, "mobilenetv3_small_100".
HUB_MOBILENET_V3_SMALL = dict(
    stackwise_num_blocks=[2, 3, 2, 3],
    stackwise_expansion=[[72, 88], [96, 240, 240], [120, 144], [288, 576, 576]],
    stackwise_num_filters=[[24, 24], [40, 40, 40], [48, 48], [96, 96, 96]],
    stackwise_kernel_size=[[3, 3], [5, 5, 5], [5, 5], [5, 5, 5]],
    stackwise_num_strides=[[2, 1], [2, 1, 1], [1, 1], [2, 1, 1]],
    stackwise_se_ratio=[[None, None], [0.25] * 3, [0.25] * 2, [0.25] * 3],
    stackwise_activation=[["relu"] * 2, ["hard_swish"] * 3, ["hard_swish"] * 2, ["hard_swish"] * 3],
    stackwise_padding=[[1, 1], [2, 2, 2], [2, 2], [2, 2, 2]],
    output_num_filters=1024, input_num_filters=16, depthwise_filters=16, depthwise_stride=2,
    depthwise_residual=False, squeeze_and_excite=0.5, last_layer_filter=576,
    input_activation="hard_swish", output_activation="hard_swish")

# keras_hub/src/utils/timm/convert_efficientnet.py, "efficientnet_b0".
HUB_EFFICIENTNET_B0 = dict(
    stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3], stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1],
    stackwise_input_filters=[32, 16, 24, 40, 80, 112, 192],
    stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320],
    stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6], stackwise_strides=[1, 2, 2, 2, 1, 2, 1],
    stackwise_block_types=["v1"] * 7, min_depth=None, include_stem_padding=True,
    use_depth_divisor_as_min_depth=True, cap_round_filter_decrease=True, stem_conv_padding="valid",
    batch_norm_momentum=0.9, batch_norm_epsilon=1e-5, dropout=0, projection_activation=None,
    stackwise_width_coefficients=[1.0] * 7, stackwise_depth_coefficients=[1.0] * 7,
    stackwise_squeeze_and_excite_ratios=[0.25] * 7)

# EfficientNetV2-B0 with keras-hub's fused/unfused blocks.
HUB_EFFICIENTNET_V2_B0 = dict(
    stackwise_kernel_sizes=[3] * 6, stackwise_num_repeats=[1, 2, 2, 3, 5, 8],
    stackwise_input_filters=[32, 16, 32, 48, 96, 112], stackwise_output_filters=[16, 32, 48, 96, 112, 192],
    stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6], stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25, 0.25, 0.25],
    stackwise_strides=[1, 2, 2, 2, 1, 2], stackwise_block_types=["fused"] * 3 + ["unfused"] * 3,
    stackwise_force_input_filters=[0] * 6, stackwise_nores_option=[False] * 6,
    stackwise_width_coefficients=[1.0] * 6, stackwise_depth_coefficients=[1.0] * 6)

# keras_hub/src/utils/timm/convert_cspnet.py, "cspdarknet53".
HUB_CSPDARKNET53 = dict(
    stem_filters=32, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 2, 8, 8, 4],
    stackwise_num_filters=[64, 128, 256, 512, 1024], bottle_ratio=(0.5, 1.0), block_ratio=(1.0, 0.5),
    expand_ratio=(2.0, 1.0), stage_type="csp", block_type="dark_block", stackwise_strides=[2, 2, 2, 2, 2],
    down_growth=True, stem_pooling=None, stem_padding="same", avg_down=False, cross_linear=False, groups=1)

# keras_hub/src/utils/timm/convert_hgnetv2.py, "hgnetv2_b0".
HUB_HGNETV2_B0 = dict(
    depths=[1, 1, 2, 1], embedding_size=16, hidden_sizes=[64, 256, 512, 1024], stem_channels=[3, 16, 16],
    hidden_act="relu", use_learnable_affine_block=True,
    stackwise_stage_filters=[[16, 16, 64, 1, 3, 3], [64, 32, 256, 1, 3, 3], [256, 64, 512, 2, 3, 5],
                             [512, 128, 1024, 1, 3, 5]],
    apply_downsample=[False, True, True, True], use_lightweight_conv_block=[False, False, True, True])

# keras-applications' Xception (entry flow, 8 middle-flow blocks, exit flow).
HUB_XCEPTION = dict(
    stackwise_conv_filters=[[32, 64], [128, 128], [256, 256], [728, 728]] + [[728, 728, 728]] * 8
    + [[728, 1024], [1536, 2048]],
    stackwise_pooling=[False, True, True, True] + [False] * 8 + [True, False])

HUB_MIT_B0 = dict(layerwise_depths=[2, 2, 2, 2], num_layers=4, layerwise_num_heads=[1, 2, 5, 8],
                  layerwise_sr_ratios=[8, 4, 2, 1], max_drop_path_rate=0.1, layerwise_patch_sizes=[7, 3, 3, 3],
                  layerwise_strides=[4, 2, 2, 2], hidden_dims=[32, 64, 160, 256])


def hub_deeplab_v3():
    backbone = _hub().DeepLabV3Backbone(
        image_encoder=hub_resnet50(), low_level_feature_key="P2", spatial_pyramid_pooling_key="P5",
        dilation_rates=[6, 12, 18], upsampling_size=8, image_shape=(SIZE, SIZE, 3))
    return _hub().DeepLabV3ImageSegmenter(backbone=backbone, num_classes=3)


def hub_retinanet():
    # BN in the feature pyramid (use_fpn_batch_norm) and keras' GroupNormalization
    # in the heads (use_prediction_head_norm, left as it is); both off by default.
    backbone = _hub().RetinaNetBackbone(
        image_encoder=hub_resnet50(image_shape=(None, None, 3)), min_level=3, max_level=7, use_p5=False,
        use_fpn_batch_norm=True, image_shape=(SIZE, SIZE, 3))
    return _hub().RetinaNetObjectDetector(backbone=backbone, num_classes=3, use_prediction_head_norm=True)


def hub_d_fine():
    # The decoder of keras-hub's D-FINE backbone test (hidden size 128, 3
    # decoder layers) on HGNetV2-B0; 16 queries and no denoising, as a 64x64
    # image has only 4x4 + 2x2 anchors at strides 16 and 32.
    image_encoder = _hub().HGNetV2Backbone(**HUB_HGNETV2_B0, image_shape=(None, None, 3),
                                           out_features=["stage3", "stage4"])
    backbone = _hub().DFineBackbone(
        backbone=image_encoder, decoder_in_channels=[128, 128], encoder_hidden_dim=128, num_denoising=0,
        num_labels=3, hidden_dim=128, learn_initial_query=False, num_queries=16, anchor_image_size=(SIZE, SIZE),
        feat_strides=[16, 32], num_feature_levels=2, encoder_in_channels=[512, 1024], encode_proj_layers=[1],
        num_attention_heads=8, encoder_ffn_dim=512, num_encoder_layers=1, hidden_expansion=0.34,
        depth_multiplier=0.5, eval_idx=-1, num_decoder_layers=3, decoder_attention_heads=8, decoder_ffn_dim=512,
        decoder_n_points=[6, 6], lqe_hidden_dim=64, num_lqe_layers=2, image_shape=(SIZE, SIZE, 3), seed=SEED)
    return _hub().DFineObjectDetector(backbone=backbone, num_classes=3)


KERAS_HUB = {
    "hub.ResNetBackbone-50": lambda: hub_resnet50(),
    "hub.ResNetBackbone-v2-50": lambda: hub_resnet50(use_pre_activation=True),
    "hub.ResNetBackbone-vd-50": lambda: hub_resnet50(
        block_type="bottleneck_block_vd", input_conv_filters=[32, 32, 64], input_conv_kernel_sizes=[3, 3, 3]),
    "hub.CSPNetBackbone-darknet53": lambda: _hub().CSPNetBackbone(
        **HUB_CSPDARKNET53, image_shape=(SIZE, SIZE, 3)),
    "hub.EfficientNetBackbone-B0": lambda: _hub().EfficientNetBackbone(
        **HUB_EFFICIENTNET_B0, input_shape=(SIZE, SIZE, 3)),
    "hub.EfficientNetBackbone-V2-B0": lambda: _hub().EfficientNetBackbone(
        **HUB_EFFICIENTNET_V2_B0, input_shape=(SIZE, SIZE, 3)),
    "hub.MobileNetBackbone-V3-Small": lambda: _hub().MobileNetBackbone(
        **HUB_MOBILENET_V3_SMALL, image_shape=(SIZE, SIZE, 3)),
    "hub.DenseNetBackbone-121": lambda: _hub().DenseNetBackbone(
        stackwise_num_repeats=[6, 12, 24, 16], image_shape=(SIZE, SIZE, 3)),
    "hub.XceptionBackbone": lambda: _hub().XceptionBackbone(**HUB_XCEPTION, image_shape=(SIZE, SIZE, 3)),
    "hub.HGNetV2Backbone-B0": lambda: _hub().HGNetV2Backbone(**HUB_HGNETV2_B0, image_shape=(SIZE, SIZE, 3)),
    "hub.ResNetImageClassifier-50": lambda: _hub().ResNetImageClassifier(backbone=hub_resnet50(), num_classes=10),
    "hub.DeepLabV3ImageSegmenter-ResNet-50": hub_deeplab_v3,
    "hub.RetinaNetObjectDetector-ResNet-50": hub_retinanet,
    "hub.BASNetImageSegmenter-ResNet-34": lambda: _hub().BASNetImageSegmenter(
        backbone=_hub().BASNetBackbone(
            image_encoder=hub_resnet50(image_shape=(None, None, 3), stackwise_num_blocks=[3, 4, 6, 3],
                                       block_type="basic_block"),
            num_classes=1, image_shape=(SIZE, SIZE, 3))),
    "hub.SegFormerImageSegmenter-MiT-B0": lambda: _hub().SegFormerImageSegmenter(
        backbone=_hub().SegFormerBackbone(
            image_encoder=_hub().MiTBackbone(**HUB_MIT_B0, image_shape=(SIZE, SIZE, 3)), projection_filters=256),
        num_classes=3),
    "hub.DFineObjectDetector-HGNetV2-B0": hub_d_fine,
}

MODELS = {**KERAS_CV, **KERAS_HUB}


# ---------------------------------------------------------------- the test


def every_layer(model):
    """Every layer reachable through Keras' tracking, custom layers' insides included."""
    return list(model._flatten_layers(include_self=False))


def graph_layers(model):
    """The layers of a Functional model's graph, entering nested graph models
    and custom layers (`_flatten_layers`).

    A task or backbone also tracks the model it was built from as an
    attribute (`self.backbone`, `self.image_encoder`), whose unused tail (e.g.
    ResNetV2's final BN, after the pyramid levels that DeepLabV3Plus takes)
    `_flatten_layers` reaches but which is not part of the graph, nor of its
    converted copy (a plain keras.Model of that graph)."""
    found = {}
    for layer in model.layers:  # a Functional model's: those of its graph
        found[id(layer)] = layer
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            inner = graph_layers(layer)
        else:
            inner = layer._flatten_layers(include_self=False)
        found.update((id(l), l) for l in inner)  # a shared layer once
    return list(found.values())


def of_type(model, cls):
    return [layer for layer in every_layer(model) if isinstance(layer, cls)]


def randomize_bn(model, seed=SEED):
    """Random gamma, beta and moving statistics in every BatchNormalization
    (tests/keras_gn/test_convert.py's helper, reaching custom layers' insides)."""
    rng = np.random.default_rng(seed)
    for layer in of_type(model, keras.layers.BatchNormalization):
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path or "gamma" in w.path
                           else rng.normal(size=w.shape) for w in layer.weights])


def build(name):
    keras.utils.set_random_seed(SEED)
    model = MODELS[name]()
    randomize_bn(model)
    return model


def images(model):
    shape = [SIZE if d is None else d for d in model.inputs[0].shape]
    shape[0] = 2
    return np.random.default_rng(SEED).uniform(0, 1, shape).astype("float32")


def outputs(model, x):
    return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(model(x, training=False))]


def assert_same_outputs(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def gn_gammas(model):
    # Without gamma: scale=False, or never built (a BN that the custom code
    # holds but never calls, e.g. keras-cv FusedMBConvBlock's `bn2`, becomes
    # a GN that stays unbuilt too).
    return [layer.gamma.numpy() for layer in of_type(model, keras_gn.GroupNormalization)
            if getattr(layer, "gamma", None) is not None]


def affine_sums(layer):
    """(sum of gamma, sum of beta), "-" for one the layer does not have."""
    return tuple(f"{float(np.sum(w)):.3f}" if w is not None else "-"
                 for w in (getattr(layer, "gamma", None), getattr(layer, "beta", None)))


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_train_reload(name, tmp_path):
    model = build(name)
    x = images(model)
    original_outputs = outputs(model, x)
    bn_layers = [l for l in graph_layers(model) if isinstance(l, keras.layers.BatchNormalization)]

    converted, report = keras_gn.convert_bn_to_gn(model, return_report=True)

    # 3. No BatchNormalization left, one report line per BN, same output shapes.
    assert not of_type(converted, keras.layers.BatchNormalization)
    assert len(report.layers) == len(bn_layers)
    assert len(of_type(converted, keras_gn.GroupNormalization)) == len(bn_layers)
    assert report.shared_layers == ()
    # gamma and beta copied (randomized in the original): the same multiset of
    # (sum of gamma, sum of beta), layer by layer.
    assert sorted(map(affine_sums, bn_layers)) == sorted(
        map(affine_sums, of_type(converted, keras_gn.GroupNormalization)))
    converted_outputs = outputs(converted, x)
    assert [o.shape for o in converted_outputs] == [o.shape for o in original_outputs]
    assert all(np.all(np.isfinite(o)) for o in converted_outputs)

    # 4. One training step on random targets shaped like the outputs.
    trainable = keras.Model(converted.input, converted.outputs)  # outputs as a list
    trainable.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
    rng = np.random.default_rng(SEED)
    targets = [rng.normal(size=o.shape).astype("float32") for o in outputs(trainable, x)]
    gammas = gn_gammas(converted)
    weights = [w.numpy() for w in converted.trainable_weights]
    loss = trainable.fit(x, targets, batch_size=2, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    if bn_layers:
        assert any(not np.array_equal(a, b) for a, b in zip(gammas, gn_gammas(converted)))
    else:  # nothing to convert (MiT): the copy still trains
        assert any(not np.array_equal(a, w.numpy()) for a, w in zip(weights, converted.trainable_weights))

    # 5. Reload.
    expected = outputs(converted, x)
    how = RELOAD[name]
    if how == "keras":
        converted.save(tmp_path / "m.keras")
        loaded = keras.saving.load_model(tmp_path / "m.keras")
        assert not of_type(loaded, keras.layers.BatchNormalization)
        assert_same_outputs(outputs(loaded, x), expected)
    else:
        assert how.startswith("weights: ")
        # Still the case? (Else move the model to "keras".)
        if "Save its weights" in how:  # keras_gn refuses to save the architecture
            with pytest.raises(ValueError, match="Save its weights"):
                converted.save(tmp_path / "m.keras")
        else:  # saves, but a third-party layer does not load from its config
            converted.save(tmp_path / "m.keras")
            with pytest.raises(TypeError, match="could not be deserialized|Error when deserializing"):
                keras.saving.load_model(tmp_path / "m.keras")
        converted.save_weights(tmp_path / "m.weights.h5")
        rebuilt = keras_gn.convert_bn_to_gn(build(name))
        rebuilt.load_weights(tmp_path / "m.weights.h5")
        assert_same_outputs(outputs(rebuilt, x), expected)
