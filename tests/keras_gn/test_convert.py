"""Tests of keras_gn.convert_bn_to_gn on hand-made graphs and on every
keras.applications family that contains BatchNormalization."""

import numpy as np
import pytest
import keras

import keras_gn
from keras_gn.convert import choose_groups
from tests import reference


def all_layers(model):
    """Every leaf layer of a model, entering nested models."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += all_layers(layer)
        else:
            found.append(layer)
    return found


def count(model, cls):
    return sum(isinstance(layer, cls) for layer in all_layers(model))


def connectivity(model):
    """{layer name: sorted [[names of the layers feeding each of its calls]]}.

    Sorted because the order in which a shared layer's calls are recorded is
    the order the graph was traversed, not part of the graph."""
    return {
        layer.name: sorted(
            [t._keras_history.operation.name for t in node.input_tensors]
            for node in layer._inbound_nodes
        )
        for layer in model.layers
    }


def randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path or "gamma" in w.path
                               else rng.normal(size=w.shape) for w in layer.weights])


# ---------------------------------------------------------------- group rule


@pytest.mark.parametrize(
    "channels, groups, group_size, min_group_size, expected",
    [
        (64, 32, None, 2, 32),  # the requested count where it fits
        (256, 32, None, 2, 32),
        (32, 32, None, 2, 16),  # 1 channel per group would be InstanceNorm
        (32, 32, None, 1, 32),
        (16, 32, None, 2, 8),
        (24, 32, None, 2, 12),
        (40, 32, None, 2, 20),
        (80, 32, None, 2, 20),
        (112, 32, None, 2, 28),
        (728, 32, None, 2, 28),
        (1, 32, None, 2, 1),
        (48, None, 16, 2, 3),
        (24, None, 16, 2, 2),  # groups of 12, the largest size <= 16 dividing 24
        (7, None, 16, 2, 1),
    ],
)
def test_choose_groups(channels, groups, group_size, min_group_size, expected):
    chosen = choose_groups(channels, groups, group_size, min_group_size)
    assert chosen == expected
    assert channels % chosen == 0


# ---------------------------------------------------------------- small graphs


def conv_bn_relu(filters, name, axis=-1):
    conv = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")
    bn = keras.layers.BatchNormalization(axis=axis, name=f"{name}_bn")
    return lambda x: keras.layers.ReLU()(bn(conv(x)))


def test_functional_outputs_match_group_norm_with_copied_gamma_beta():
    inputs = keras.Input((6, 6, 3))
    features = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    outputs = keras.layers.BatchNormalization(name="bn")(features)
    model = keras.Model(inputs, outputs)
    randomize_bn(model)
    converted = keras_gn.convert_bn_to_gn(model, groups=4)

    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    bn = model.get_layer("bn")
    conv_out = keras.Model(inputs, features)(x)
    expected = reference.group_norm(conv_out, bn.gamma.numpy(), bn.beta.numpy(), groups=4)
    np.testing.assert_allclose(converted(x), expected, rtol=1e-5, atol=2e-5)
    gn = converted.get_layer("bn")
    assert isinstance(gn, keras_gn.GroupNormalization)
    assert (gn.num_groups, gn.epsilon) == (4, 1e-5)
    # Independent weights: the original is untouched by training the copy.
    assert converted.get_layer("conv") is not model.get_layer("conv")


def test_sequential_model():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3), keras.layers.BatchNormalization(),
         keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    converted = keras_gn.convert_bn_to_gn(model, groups=8)
    assert isinstance(converted, keras.Sequential)
    assert [type(l).__name__ for l in converted.layers] == [
        "Conv2D", "GroupNormalization", "ReLU", "Flatten", "Dense"]
    for old, new in zip(model.layers, converted.layers):
        if not isinstance(old, keras.layers.BatchNormalization):
            for a, b in zip(old.get_weights(), new.get_weights()):
                np.testing.assert_array_equal(a, b)
    assert converted(np.ones((1, 8, 8, 3))).shape == (1, 4)


def test_nested_models_and_shared_layers():
    inner_in = keras.Input((8, 8, 16))
    inner = keras.Model(inner_in, conv_bn_relu(16, "inner")(inner_in), name="inner")
    head = keras.Sequential(
        [keras.Input((8, 8, 16)), keras.layers.BatchNormalization(name="head_bn"),
         keras.layers.GlobalAveragePooling2D()], name="head")
    shared_bn = keras.layers.BatchNormalization(name="shared_bn")

    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    stem = keras.layers.Conv2D(16, 1, name="stem")
    xa, xb = shared_bn(stem(a)), shared_bn(stem(b))  # shared layers, called twice
    xa, xb = inner(xa), inner(xb)  # a nested model, called twice
    merged = keras.layers.Add(name="add")([xa, xb])
    model = keras.Model([a, b], head(merged))
    randomize_bn(model)

    converted, report = keras_gn.convert_bn_to_gn(model, groups=4, return_report=True)
    assert count(converted, keras.layers.BatchNormalization) == 0
    assert count(converted, keras_gn.GroupNormalization) == 3
    assert sorted(l.path for l in report.layers) == ["head/head_bn", "inner/inner_bn", "shared_bn"]
    assert connectivity(converted) == connectivity(model)
    # Still one shared layer with two calls, one nested model called twice.
    assert len(converted.get_layer("shared_bn")._inbound_nodes) == 2
    assert len(converted.get_layer("inner")._inbound_nodes) == 2
    x = [np.ones((2, 8, 8, 3), "float32"), np.zeros((2, 8, 8, 3), "float32")]
    assert converted(x).shape == (2, 16)
    np.testing.assert_array_equal(
        converted.get_layer("inner").get_layer("inner_bn").gamma,
        model.get_layer("inner").get_layer("inner_bn").gamma)


def test_bn_called_with_training_flag_and_channels_first_axis():
    inputs = keras.Input((16, 5, 5))
    x = keras.layers.Conv2D(16, 1, data_format="channels_first")(inputs)
    x = keras.layers.BatchNormalization(axis=1, epsilon=1e-3, name="bn")(x, training=False)
    model = keras.Model(inputs, x)
    converted = keras_gn.convert_bn_to_gn(model, groups=8, epsilon=None)
    gn = converted.get_layer("bn")
    assert (gn.axis, gn.epsilon, gn.num_groups) == (1, 1e-3, 8)
    assert converted(np.ones((1, 16, 5, 5))).shape == (1, 16, 5, 5)


def test_mixed_precision_model_keeps_its_policy():
    keras.config.set_dtype_policy("mixed_float16")
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, conv_bn_relu(8, "block")(inputs))
    converted = keras_gn.convert_bn_to_gn(model, groups=4)
    gn = converted.get_layer("block_bn")
    assert gn.dtype_policy.name == "mixed_float16"
    assert gn.gamma.dtype == "float32"
    assert converted(np.ones((1, 6, 6, 3))).dtype == "float16"


def test_options_reset_and_zero_init_last_on_resnet50():
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    randomize_bn(model)
    reset = keras_gn.convert_bn_to_gn(model, init="reset")
    zero_last, report = keras_gn.convert_bn_to_gn(model, init="zero_init_last", return_report=True)
    zeroed = {l.path for l in report.layers if l.gamma_beta == "reset, gamma=0"}
    # ResNet-50 has 16 bottleneck blocks; the third BN of each ends the
    # residual branch, the projection shortcuts (_0_bn) do not.
    assert len(zeroed) == 16 and all(name.endswith("_3_bn") for name in zeroed)
    for layer in all_layers(zero_last):
        if isinstance(layer, keras_gn.GroupNormalization):
            expected_gamma = 0.0 if layer.name in zeroed else 1.0
            np.testing.assert_array_equal(layer.gamma, expected_gamma)
            np.testing.assert_array_equal(layer.beta, 0.0)
            reset_gn = reset.get_layer(layer.name)
            np.testing.assert_array_equal(reset_gn.gamma, 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(init="zeros"), r"init='zeros' is not one of \('copy', 'reset', 'zero_init_last'\)"),
        (dict(groups=0), "positive integer"),
        (dict(groups=None), "exactly one of"),
        (dict(groups=16, group_size=8), "exactly one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    model = keras.Sequential([keras.Input((4, 4, 8)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match=message):
        keras_gn.convert_bn_to_gn(model, **kwargs)


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(8, 1)
        self.bn = keras.layers.BatchNormalization()

    def call(self, x, training=None):
        return self.bn(self.conv(x), training=training)


class Pyramid(keras.layers.Layer):
    """BatchNormalization held every way custom code holds layers: an
    attribute, a list, a dict, a tuple, inside a nested custom layer and
    inside a nested Functional model, called with `training=`."""

    def __init__(self, channels=8, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv = keras.layers.Conv2D(channels, 1, name="conv")
        self.bn = keras.layers.BatchNormalization(name="bn")
        self.branches = [keras.layers.BatchNormalization(name=f"branch_{i}") for i in range(2)]
        self.by_name = {"pool": keras.layers.BatchNormalization(name="pool_bn")}
        self.pair = (keras.layers.Dense(channels, name="proj"), keras.layers.BatchNormalization(name="proj_bn"))
        self.inner = Inner(channels, name="inner")
        inputs = keras.Input((None, None, channels))
        self.head = keras.Model(inputs, keras.layers.BatchNormalization(name="head_bn")(inputs), name="head")

    def call(self, x, training=None):
        x = keras.ops.relu(self.bn(self.conv(x), training=training))
        outputs = [branch(x, training=training) for branch in self.branches]
        outputs.append(self.by_name["pool"](x, training=training))
        outputs.append(self.pair[1](self.pair[0](x), training=training))
        outputs.append(self.head(self.inner(x, training=training)))
        return keras.ops.concatenate(outputs, axis=-1)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class Inner(keras.layers.Layer):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm = keras.layers.BatchNormalization(name="norm")

    def call(self, x, training=None):
        return self.norm(x, training=training)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


PYRAMID_BN_PATHS = ["pyramid/bn", "pyramid/branch_0", "pyramid/branch_1", "pyramid/pool_bn",
                    "pyramid/proj_bn", "pyramid/inner/norm", "pyramid/head/head_bn"]


def pyramid_model():
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, Pyramid(name="pyramid")(inputs))
    randomize_bn(model)
    return model


def every_layer(model):
    """Every layer reachable through Keras' tracking, custom layers' insides included."""
    return list(model._flatten_layers(include_self=False))


def test_bn_inside_custom_layers_is_converted_with_its_path():
    model = pyramid_model()
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    before = model(x, training=False)
    converted, report = keras_gn.convert_bn_to_gn(model, groups=4, return_report=True)

    assert sorted(l.path for l in report.layers) == sorted(PYRAMID_BN_PATHS)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in every_layer(converted))
    assert sum(isinstance(l, keras_gn.GroupNormalization) for l in every_layer(converted)) == 7
    # The copy's call() uses the GN layers: its output is the reference GN of
    # each BN's input with the BN's gamma and beta.
    pyramid, original = converted.get_layer("pyramid"), model.get_layer("pyramid")
    assert pyramid is not original and pyramid.conv is not original.conv
    hidden = np.maximum(reference.group_norm(original.conv(x), original.bn.gamma.numpy(),
                                             original.bn.beta.numpy(), groups=4), 0)
    first_branch = reference.group_norm(hidden, original.branches[0].gamma.numpy(),
                                        original.branches[0].beta.numpy(), groups=4)
    np.testing.assert_allclose(converted(x)[..., :8], first_branch, rtol=1e-4, atol=1e-4)
    # Weights: no moving statistics left, GN's gamma and beta copied.
    assert len(pyramid.weights) == 2 + 7 * 2 + 2  # Conv2D, 7 GN, Dense
    assert "pyramid/inner/norm/gamma" in [v.path for v in pyramid.weights]
    np.testing.assert_array_equal(pyramid.inner.norm.gamma, original.inner.norm.gamma)
    # The original is untouched.
    assert isinstance(original.bn, keras.layers.BatchNormalization)
    assert all(isinstance(b, keras.layers.BatchNormalization) for b in original.branches)
    np.testing.assert_array_equal(model(x, training=False), before)


def test_converted_custom_layer_trains_and_saves_through_its_weights(tmp_path):
    model = pyramid_model()
    converted = keras_gn.convert_bn_to_gn(model, groups=4)
    converted.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 6, 6, 3)).astype("float32"), rng.normal(size=(4, 6, 6, 40)).astype("float32")
    gamma = converted.get_layer("pyramid").inner.norm.gamma.numpy()
    loss = converted.fit(x, y, epochs=1, batch_size=4, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    assert not np.array_equal(converted.get_layer("pyramid").inner.norm.gamma.numpy(), gamma)

    # Its class would rebuild BatchNormalization: saving the architecture says so.
    with pytest.raises(ValueError, match=r"Layer 'pyramid' \(Pyramid\) had layers replaced inside its own "
                                         r"code by convert_bn_to_gn.*Save its weights"):
        converted.save(tmp_path / "model.keras")
    # The recipe: save the weights; build the original, convert it the same way, load them.
    converted.save_weights(tmp_path / "gn.weights.h5")
    rebuilt = keras_gn.convert_bn_to_gn(pyramid_model(), groups=4)
    rebuilt.load_weights(tmp_path / "gn.weights.h5")
    np.testing.assert_allclose(rebuilt(x), converted(x), rtol=1e-6, atol=1e-6)


def test_subclassed_model_is_converted_in_a_copy():
    model = SubclassedNet()
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    before = model(x)
    converted, report = keras_gn.convert_bn_to_gn(model, groups=4, return_report=True)
    assert type(converted) is SubclassedNet and converted is not model
    assert [l.path for l in report.layers] == ["batch_normalization"] or len(report.layers) == 1
    assert isinstance(converted.bn, keras_gn.GroupNormalization)
    assert isinstance(model.bn, keras.layers.BatchNormalization)
    expected = reference.group_norm(model.conv(x), model.bn.gamma.numpy(), model.bn.beta.numpy(), groups=4)
    np.testing.assert_allclose(converted(x, training=True), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(model(x), before)


class WithUnusedBN(keras.layers.Layer):
    """As keras-cv's FusedMBConvBlock: a BatchNormalization created, never called."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(8)
        self.bn = keras.layers.BatchNormalization(name="used")
        self.unused = keras.layers.BatchNormalization(name="unused")

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.bn.build((*input_shape[:-1], 8))

    def call(self, x):
        return self.bn(self.dense(x))


def test_a_bn_that_custom_code_never_calls_becomes_an_unbuilt_gn():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, WithUnusedBN(name="block")(inputs))
    converted, report = keras_gn.convert_bn_to_gn(model, groups=4, return_report=True)
    block = converted.get_layer("block")
    assert isinstance(block.unused, keras_gn.GroupNormalization) and not block.unused.built
    assert [(l.path, l.channels, l.groups) for l in report.layers] == [("block/used", 8, 4), ("block/unused", None, None)]
    assert report.adjusted == ()
    assert any(line.startswith("block/unused") and "unbuilt (never called)" in line for line in str(report).splitlines())
    assert converted(np.ones((2, 4), "float32")).shape == (2, 8)


class LazyAdd(keras.layers.Layer):
    """Holds a sublayer built only at the first real call (as keras-hub's
    HGNetV2 and FeaturePyramid do)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.bn = keras.layers.BatchNormalization()

    def build(self, input_shape):
        self.bn.build(input_shape)

    def call(self, x):
        return self.dense(self.bn(x))

    def compute_output_shape(self, input_shape):  # so the symbolic call skips call()
        return (*input_shape[:-1], 4)


def test_a_copy_builds_its_own_lazy_sublayers_not_the_original_s():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, LazyAdd(name="lazy")(inputs))  # never called on data
    original_dense = model.get_layer("lazy").dense
    assert not original_dense.built
    converted = keras_gn.convert_bn_to_gn(model, groups=3)
    assert converted(np.ones((2, 3), "float32")).shape == (2, 4)
    assert converted.get_layer("lazy").dense.built and len(converted.get_layer("lazy").dense.weights) == 2
    assert not original_dense.built and not original_dense.weights


class Uncopyable(keras.layers.Layer):
    """A layer that refuses both deepcopy and a rebuild from its config."""

    def __init__(self, with_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(8)
        self.bn = keras.layers.BatchNormalization() if with_bn else None

    def call(self, x):
        x = self.dense(x)
        return self.bn(x) if self.bn is not None else x

    def __deepcopy__(self, memo):
        raise TypeError("cannot deepcopy a file handle")

    @classmethod
    def from_config(cls, config):
        raise TypeError("missing argument 'vocabulary'")


class NoRebuild(keras.layers.Layer):
    """A layer whose class cannot rebuild itself from its own config (as
    keras-cv's HierarchicalTransformerEncoder)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return self.dense(x)

    @classmethod
    def from_config(cls, config):
        raise TypeError("missing argument 'units'")


def test_layers_that_cannot_rebuild_from_config_are_copied():
    inputs = keras.Input((4,))
    x = NoRebuild(8, name="no_rebuild")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    converted, report = keras_gn.convert_bn_to_gn(model, groups=4, return_report=True)
    copy, original = converted.get_layer("no_rebuild"), model.get_layer("no_rebuild")
    np.testing.assert_array_equal(copy.dense.kernel, original.dense.kernel)
    kernel = original.dense.kernel.numpy()
    copy.dense.kernel.assign(kernel + 1)  # independent weights
    np.testing.assert_array_equal(original.dense.kernel, kernel)
    assert report.shared_layers == ()


def test_a_layer_that_can_be_neither_copied_nor_rebuilt_is_shared_and_reported():
    inputs = keras.Input((4,))
    x = Uncopyable(name="uncopyable")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    converted, report = keras_gn.convert_bn_to_gn(model, groups=4, return_report=True)
    assert converted.get_layer("uncopyable") is model.get_layer("uncopyable")
    assert report.shared_layers == ("uncopyable",)
    assert "1 layer(s) could be neither copied nor rebuilt" in str(report)


def test_bn_inside_a_layer_that_can_be_neither_copied_nor_rebuilt_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Uncopyable(with_bn=True, name="custom")(inputs))
    with pytest.raises(ValueError, match="layer 'custom' of class Uncopyable: it contains 1 BatchNormalization"
                                         ".*neither copied"):
        keras_gn.convert_bn_to_gn(model)


def test_conversion_inside_a_distribution_strategy_scope_makes_distributed_variables():
    import tensorflow as tf

    model = pyramid_model()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        converted = keras_gn.convert_bn_to_gn(model, groups=4)
    variables = converted.get_layer("pyramid").weights
    assert all(isinstance(v.value, tf.distribute.DistributedValues) for v in variables)


def test_unbuilt_sequential_is_rejected():
    model = keras.Sequential([keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="not built"):
        keras_gn.convert_bn_to_gn(model)


def test_report_lists_every_layer_and_marks_adjusted_group_counts():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn_relu(64, "a")(inputs)
    x = conv_bn_relu(24, "b")(x)
    _, report = keras_gn.convert_bn_to_gn(keras.Model(inputs, x), return_report=True)
    assert [(l.path, l.channels, l.groups, l.group_size) for l in report.layers] == [
        ("a_bn", 64, 32, 2), ("b_bn", 24, 12, 2)]
    assert [l.path for l in report.adjusted] == ["b_bn"]
    text = str(report)
    assert "Converted 2 BatchNormalization layers" in text and "1 use another group count" in text
    assert any(line.startswith("b_bn") and line.endswith("*") for line in text.splitlines())


def test_converted_model_trains_saves_and_loads(tmp_path):
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=5)
    converted = keras_gn.convert_bn_to_gn(model, init="zero_init_last")
    converted.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (4, 32, 32, 3)).astype("float32"), rng.integers(0, 5, 4)
    history = converted.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "mobilenetv2_gn.keras"
    converted.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), converted.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert count(loaded, keras_gn.GroupNormalization) == count(model, keras.layers.BatchNormalization)


# ---------------------------------------------------------------- keras.applications

APPLICATIONS = {
    "ResNet50": 32, "ResNet101": 32, "ResNet152": 32, "ResNet50V2": 32, "ResNet101V2": 32,
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
    "DenseNet121": 32, "EfficientNetB0": 32, "EfficientNetV2B0": 32, "Xception": 71,
    "InceptionV3": 75, "InceptionResNetV2": 75, "NASNetMobile": 32,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications(name):
    size = APPLICATIONS[name]
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
    randomize_bn(model)
    converted, report = keras_gn.convert_bn_to_gn(model, return_report=True)

    bn_layers = [l for l in all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    assert bn_layers, f"{name} has no BatchNormalization"
    assert count(converted, keras.layers.BatchNormalization) == 0
    assert len(report.layers) == len(bn_layers)
    # Same layers in the same order, same connections: only BN -> GN changed.
    assert [l.name for l in converted.layers] == [l.name for l in model.layers]
    assert connectivity(converted) == connectivity(model)
    for old, new in zip(all_layers(model), all_layers(converted)):
        if isinstance(old, keras.layers.BatchNormalization):
            assert isinstance(new, keras_gn.GroupNormalization)
            assert new.num_groups == choose_groups(old.moving_mean.shape[0])
            assert (new.scale, new.center, new.axis) == (old.scale, old.center, old.axis)
            if old.scale:
                np.testing.assert_array_equal(new.gamma, old.gamma)
            if old.center:
                np.testing.assert_array_equal(new.beta, old.beta)
            assert len(new.weights) == old.scale + old.center  # no moving statistics
        else:
            assert type(new) is type(old)
            assert len(new.weights) == len(old.weights)
            for a, b in zip(old.weights, new.weights):
                np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    y = converted.predict(x, verbose=0)
    assert y.shape == (2, 10) and np.all(np.isfinite(y))


def test_masked_batch_norm_becomes_a_gn_that_honours_the_mask():
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 8, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    sequential = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(10, 8, mask_zero=True),
                                   keras.layers.BatchNormalization(name="seq_bn")])
    tokens = np.array([[3, 1, 4, 1, 5]])
    padded = np.array([[3, 1, 4, 1, 5, 0, 0, 0]])
    for original in (model, sequential):
        converted = keras_gn.convert_bn_to_gn(original, groups=4)
        gn = [layer for layer in converted.layers if isinstance(layer, keras_gn.GroupNormalization)]
        assert len(gn) == 1
        # The padding does not change the statistics of the real positions,
        # and the mask still leaves the model.
        np.testing.assert_allclose(converted(padded)[:, :5], converted(tokens), rtol=1e-5, atol=1e-5)
        assert converted.outputs[0]._keras_mask is not None


def test_input_names_are_kept():
    inputs = keras.Input((4, 4, 8), name="image")
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inputs))
    converted = keras_gn.convert_bn_to_gn(model, groups=4)
    assert isinstance(converted.layers[0], keras.layers.InputLayer)
    assert converted.layers[0].name == "image"


def test_lambda_layers_keep_their_python_function():
    # A lambda that needs its module's globals (`keras`, `np`): rebuilding it
    # from serialized bytecode, as from_config does, would lose them.
    block = keras.Sequential(
        [keras.layers.Conv2D(8, 1), keras.layers.BatchNormalization(),
         keras.layers.Lambda(lambda x: keras.activations.silu(x) * np.float32(2.0))])
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, block(inputs))
    converted = keras_gn.convert_bn_to_gn(model, groups=4)
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype("float32")
    conv, gn, _ = converted.layers[1].layers
    assert isinstance(gn, keras_gn.GroupNormalization)
    expected = keras.activations.silu(gn(conv(x))) * 2.0
    np.testing.assert_allclose(converted(x), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- keras-cv


def test_keras_cv_backbones():
    keras_cv = pytest.importorskip("keras_cv")
    kwargs = dict(stackwise_filters=[16, 32], stackwise_blocks=[2, 2], stackwise_strides=[1, 2],
                  input_shape=(32, 32, 3), include_rescaling=True)
    for backbone in (keras_cv.models.ResNetBackbone(**kwargs), keras_cv.models.ResNetV2Backbone(**kwargs)):
        randomize_bn(backbone)
        converted = keras_gn.convert_bn_to_gn(backbone, group_size=8)
        assert count(converted, keras.layers.BatchNormalization) == 0
        assert count(converted, keras_gn.GroupNormalization) == count(backbone, keras.layers.BatchNormalization)
        assert connectivity(converted) == connectivity(backbone)
        x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
        assert converted(x).shape == backbone(x).shape
