"""Tests of the zoo ResNet and VGG builders."""

import numpy as np
import pytest
import keras

import keras_gn
import zoo


# The wide BiT models (217 M to 937 M parameters) are left out: resnetv2_50x1_bit
# is the same code at width 1, and test_bit.py checks the width factor.
WIDE = ("resnetv2_50x3_bit", "resnetv2_101x3_bit", "resnetv2_152x2_bit", "resnetv2_152x4_bit")


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["gn", "bn"])
@pytest.mark.parametrize("name", [name for name in zoo.list_models() if name not in WIDE])
def test_every_builder_builds_and_runs_with_both_norms(name, norm):
    cifar = name.startswith(("resnet20", "resnet32", "resnet56", "resnet110", "vgg16_cifar"))
    size = 32 if cifar or name.startswith("vgg16") else 64
    model = zoo.get_model(name)(input_shape=(size, size, 3), classes=7, norm=norm)
    norm_type = keras_gn.GroupNormalization if norm == "gn" else keras.layers.BatchNormalization
    norms = [l for l in model.layers if isinstance(l, (keras_gn.GroupNormalization, keras.layers.BatchNormalization))]
    assert norms and all(isinstance(l, norm_type) for l in norms)
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype("float32")
    # BN in training mode (batch statistics): at initialization its inference
    # mode is the identity, and BiT's weight-standardized convolutions (unit
    # variance weights, made to be followed by a norm) then overflow.
    y = keras.ops.convert_to_numpy(model(x, training=norm == "bn"))
    assert y.shape == (2, 7)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name, params", [
    ("resnet18_gn", 11_689_512), ("resnet34_gn", 21_797_672), ("resnet50_gn", 25_557_032),
    ("resnet101_gn", 44_549_160), ("resnet152_gn", 60_192_808), ("vgg16_gn", 138_361_768),
])
def test_imagenet_parameter_counts_match_the_reference_architectures(name, params):
    # torchvision's counts (the same parameters, GN scale/offset in place of
    # BN's); tensorpack's ResNet-50 GN log counts 25,557,032 too.
    assert zoo.get_model(name)().count_params() == params


def test_cifar_resnet_depths():
    for depth in (20, 32, 56, 110):
        model = zoo.get_model(f"resnet{depth}_gn")()
        convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D) and l.kernel.shape[0] == 3]
        dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
        assert len(convs) + len(dense) == depth  # 6n + 2 weighted layers (shortcuts aside)
    widths = {l.kernel.shape[-1] for l in zoo.resnet20_gn().layers if isinstance(l, keras.layers.Conv2D)}
    assert widths == {16, 32, 64}


def test_cifar_groups_are_chosen_for_16_channels():
    groups = {l.name: l.num_groups for l in zoo.resnet20_gn().layers
              if isinstance(l, keras_gn.GroupNormalization)}
    assert groups["conv1_norm"] == 8  # 16 channels: 8 groups of 2
    assert groups["conv3_block1_1_norm"] == 16 and groups["conv4_block1_1_norm"] == 32
    assert {l.num_groups for l in zoo.resnet20_gn(groups=4).layers
            if isinstance(l, keras_gn.GroupNormalization)} == {4}
    assert {l.num_groups for l in zoo.resnet20_gn(group_size=8).layers
            if isinstance(l, keras_gn.GroupNormalization)} == {2, 4, 8}


@pytest.mark.parametrize("name", ["resnet20_gn", "resnet50_gn", "vgg16_cifar_gn"])
def test_weight_standardization_standardizes_every_convolution(name):
    size = 64 if name == "resnet50_gn" else 32
    ws = zoo.get_model(name)(input_shape=(size, size, 3), weight_standardization=True)
    plain = zoo.get_model(name)(input_shape=(size, size, 3))
    convs = [l for l in ws.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(isinstance(l, keras_gn.WeightStandardizedConv2D) for l in convs)
    assert not any(isinstance(l, keras_gn.WeightStandardizedConv2D) for l in plain.layers)
    assert ws.count_params() == plain.count_params()
    # The plain model given the standardized kernels computes the same.
    plain.set_weights(ws.get_weights())
    for layer in convs:
        plain.get_layer(layer.name).kernel.assign(keras_gn.layers.standardize_kernel(layer.kernel))
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(plain.predict(x, verbose=0), ws.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_resnet50_is_the_authors_architecture():
    model = zoo.resnet50_gn()
    gn = [l for l in model.layers if isinstance(l, keras_gn.GroupNormalization)]
    assert {l.num_groups for l in gn} == {32} and {l.epsilon for l in gn} == {1e-5}
    assert not any(getattr(l, "use_bias", False) for l in model.layers if isinstance(l, keras.layers.Conv2D))
    # Stride on the 3x3 conv; explicit symmetric padding, never "same".
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_0_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_2_conv_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("conv1_conv_pad").padding == ((3, 3), (3, 3))
    assert all(l.padding == "valid" for l in model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.MaxPooling2D)))
    # zero_init_last: the last norm of each residual branch starts at gamma 0.
    last = [l for l in gn if l.name.endswith("_3_norm")]
    assert len(last) == 16 and all(np.all(l.gamma.numpy() == 0) for l in last)
    assert all(np.all(l.gamma.numpy() == 1) for l in gn if not l.name.endswith("_3_norm"))
    assert all(np.all(l.gamma.numpy() == 1) for l in zoo.resnet50_gn(zero_init_last=False).layers
               if isinstance(l, keras_gn.GroupNormalization))


def test_include_top_false_pooling_and_input_tensor():
    features = zoo.resnet18_gn(include_top=False)
    assert features.output_shape == (None, None, None, 512)
    assert zoo.resnet18_gn(include_top=False, pooling="avg").output_shape == (None, 512)
    assert zoo.resnet18_gn(include_top=False, pooling="max").output_shape == (None, 512)
    tensor = keras.Input((48, 48, 3))
    model = zoo.resnet18_gn(input_tensor=tensor, classes=3)
    assert model.input_shape == (None, 48, 48, 3) and model.output_shape == (None, 3)
    logits = zoo.resnet20_gn(classifier_activation=None)
    assert logits.layers[-1].activation is keras.activations.linear


def test_channels_first_data_format():
    keras.config.set_image_data_format("channels_first")
    try:
        model = zoo.resnet20_gn(norm="gn")
        assert model.input_shape == (None, 3, 32, 32)
        assert model.get_layer("conv1_norm").axis == 1
        assert model.predict(np.zeros((1, 3, 32, 32)), verbose=0).shape == (1, 10)
    finally:
        keras.config.set_image_data_format("channels_last")


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="ln"), r"norm='ln' is not one of \('gn', 'bn'\)"),
    (dict(include_top=False, pooling="mean"), "pooling='mean' is not one of"),
    (dict(weights="nonexistent"), "weights='nonexistent' is neither None"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.resnet20_gn(**kwargs)


def test_unknown_model():
    with pytest.raises(ValueError, match="Unknown model 'resnet51_gn'. Zoo models: "):
        zoo.get_model("resnet51_gn")


def test_trains_and_saves(tmp_path):
    model = zoo.resnet20_gn(classes=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
