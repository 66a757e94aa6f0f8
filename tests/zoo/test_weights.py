"""Tests of the weights registry and of loading weights into zoo models:
downloads from a real HTTP server on 127.0.0.1, sha256 checks, re-fetching
corrupt files, the mirror and cache settings, and errors that say what to
do."""

import hashlib
import shutil
import socket

import numpy as np
import pytest

import keras_gn
import zoo
from zoo import download
from zoo import weights as weights_lib
from tests.zoo.conftest import entry


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_registry_is_consistent():
    registry = weights_lib.registry()
    assert set(zoo.list_weights()) == set(registry)
    for tag, e in registry.items():
        assert e.arch in zoo.list_models(), tag
        if e.packaged:
            assert e.sha256 == weights_lib.sha256_of(weights_lib.PACKAGED_DIR / e.packaged), tag
        else:
            assert e.url.startswith("http") and e.filename and (e.sha256 or e.verification)
        assert e.preprocessing.color in ("RGB", "BGR") and len(e.preprocessing.mean) == 3
    defaults = [(e.arch, e.default_for) for e in registry.values() if e.default_for]
    assert len(defaults) == len(set(defaults))
    assert zoo.list_weights("resnet50_gn") == [
        "resnet50_gn.a1h_in1k", "resnet50_gn.in1k_detectron", "resnet50_gn.in1k_tensorpack"]
    assert weights_lib.resolve("resnet50_gn", "imagenet").tag == "resnet50_gn.in1k_detectron"
    info = zoo.get_weights_info("resnet101_gn.in1k_detectron")
    assert info.metric["top1_error"] == 22.6 and info.preprocessing.color == "BGR"


@pytest.mark.parametrize("weights, message", [
    ("imagenet", r"No 'imagenet' weights are registered for resnet18_gn yet\. Weights for resnet18_gn: none.* 'imagenet' weights exist for: .*resnet50_gn"),
    ("cifar10", r"No 'cifar10' weights .* 'cifar10' weights exist for: .*resnet20_gn"),
    ("resnet50_gn.in1k_detectron", "weights 'resnet50_gn.in1k_detectron' are for resnet50_gn, not resnet18_gn"),
    ("in1k_nothing", r"weights='in1k_nothing' is neither None, a registered tag for resnet18_gn"),
])
def test_bad_weights_arguments(weights, message):
    with pytest.raises(ValueError, match=message):
        weights_lib.resolve("resnet18_gn", weights)


def test_an_invalid_registry_entry_is_rejected(registry_with):
    registry_with(entry("resnet20_gn.bad", url="http://x/y.h5", filename="y.h5"))
    with pytest.raises(ValueError, match="needs a sha256, or a `verification` note"):
        weights_lib.registry()


@pytest.fixture
def served_resnet20(file_server, tmp_path, registry_with, weights_cache):
    """resnet20_gn weights with random values, served over HTTP and registered."""
    model = zoo.resnet20_gn(classes=10)
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape) * 0.1)
    path = file_server.root / "resnet20_gn_test.weights.h5"
    model.save_weights(path)
    record = entry("resnet20_gn.test", dataset="cifar10", classes=10, default_for="cifar10",
                   url=f"{file_server.url}/{path.name}", filename=path.name, sha256=sha256(path))
    registry_with(record)
    return model, file_server, record


def test_download_verify_and_cache(served_resnet20, weights_cache):
    model, server, record = served_resnet20
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    loaded = zoo.resnet20_gn(weights="cifar10")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert len(server.requests) == 1 and (weights_cache / record["filename"]).exists()
    zoo.resnet20_gn(weights="resnet20_gn.test")  # the full tag; served from the cache
    zoo.resnet20_gn(weights="test")  # the short tag
    assert len(server.requests) == 1


def test_corrupt_or_partial_cached_file_is_fetched_again(served_resnet20, weights_cache):
    _, server, record = served_resnet20
    zoo.resnet20_gn(weights="cifar10")
    cached = weights_cache / record["filename"]
    cached.write_bytes(cached.read_bytes()[:1000])  # a partial download
    zoo.resnet20_gn(weights="cifar10")
    assert len(server.requests) == 2
    assert sha256(cached) == record["sha256"]


def test_a_file_whose_hash_does_not_match_is_rejected_and_removed(served_resnet20, weights_cache):
    _, server, record = served_resnet20
    (server.root / record["filename"]).write_bytes(b"not the registered file")
    with pytest.raises(download.DownloadError, match=r"Could not get the weight file resnet20_gn_test"):
        zoo.resnet20_gn(weights="cifar10")
    assert not (weights_cache / record["filename"]).exists()


def test_no_network_says_which_file_to_place_where(registry_with, weights_cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry_with(entry("resnet20_gn.offline", classes=10, url=f"http://127.0.0.1:{port}/r20.weights.h5",
                        filename="r20.weights.h5", sha256="0" * 64))
    with pytest.raises(download.DownloadError) as error:
        zoo.resnet20_gn(weights="offline")
    message = str(error.value)
    assert "Could not get the weight file r20.weights.h5" in message
    assert f"place it at {weights_cache / 'r20.weights.h5'}" in message
    assert "KERAS_GN_WEIGHTS_MIRROR" in message and "sha256 " + "0" * 64 in message
    assert f"from http://127.0.0.1:{port}/r20.weights.h5: " in message and len(message.splitlines()) == 1
    # One error, not a chain of urllib's tracebacks.
    assert error.value.__cause__ is None and error.value.__suppress_context__
    # With a mirror set, the message names the mirror and does not suggest setting one.
    mirror = f"http://127.0.0.1:{port}/mirror"
    monkeypatch.setenv("KERAS_GN_WEIGHTS_MIRROR", mirror)
    with pytest.raises(download.DownloadError) as error:
        zoo.resnet20_gn(weights="offline")
    message = str(error.value)
    assert f"from the mirror KERAS_GN_WEIGHTS_MIRROR={mirror}: " in message
    assert "check that the mirror serves r20.weights.h5, or unset KERAS_GN_WEIGHTS_MIRROR" in message
    assert "set KERAS_GN_WEIGHTS_MIRROR to a base URL" not in message


def test_mirror(served_resnet20, file_server, monkeypatch, tmp_path):
    model, server, record = served_resnet20
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.move(server.root / record["filename"], mirror / record["filename"])
    # The original URL now 404s; the mirror (the same server, another path) has it.
    shutil.move(str(mirror), str(server.root / "mirror"))
    monkeypatch.setenv("KERAS_GN_WEIGHTS_MIRROR", f"{server.url}/mirror/")
    zoo.resnet20_gn(weights="cifar10")
    assert server.requests == [f"/mirror/{record['filename']}"]


def test_include_top_false_and_classes(served_resnet20):
    model, _, _ = served_resnet20
    features = zoo.resnet20_gn(weights="cifar10", include_top=False, pooling="avg")
    for layer in (l for l in features.layers if l.weights):
        for a, b in zip(layer.weights, model.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="have a 10-class classifier but the model has 100 classes"):
        zoo.resnet20_gn(weights="cifar10", classes=100)


def test_local_file_weights(tmp_path):
    model = zoo.resnet20_gn()
    model.get_layer("conv1_conv").kernel.assign(np.ones((3, 3, 3, 16)))
    model.save_weights(tmp_path / "mine.weights.h5")
    loaded = zoo.resnet20_gn(weights=str(tmp_path / "mine.weights.h5"))
    np.testing.assert_array_equal(loaded.get_layer("conv1_conv").kernel, 1.0)
    with pytest.raises(ValueError, match="does not fit resnet32_gn"), \
            pytest.warns(UserWarning, match="Skipping nested container"):  # Keras' own note
        zoo.resnet32_gn(weights=str(tmp_path / "mine.weights.h5"))


def test_packaged_weights(tmp_path, monkeypatch, registry_with):
    model = zoo.resnet20_gn()
    model.get_layer("conv1_conv").kernel.assign(np.full((3, 3, 3, 16), 0.5))
    model.save_weights(tmp_path / "r20.weights.h5")
    monkeypatch.setattr(weights_lib, "PACKAGED_DIR", tmp_path)
    registry_with(entry("resnet20_gn.shipped", classes=10, packaged="r20.weights.h5", sha256=sha256(tmp_path / "r20.weights.h5")))
    np.testing.assert_array_equal(zoo.resnet20_gn(weights="shipped").get_layer("conv1_conv").kernel, 0.5)
    registry_with(entry("resnet20_gn.gone", classes=10, packaged="missing.weights.h5", sha256="0" * 64))
    with pytest.raises(FileNotFoundError, match="missing.weights.h5 of resnet20_gn.gone are missing"):
        zoo.resnet20_gn(weights="gone")


def test_corrupt_packaged_weights_say_to_reinstall(tmp_path, monkeypatch, registry_with):
    zoo.resnet20_gn().save_weights(tmp_path / "r20.weights.h5")
    monkeypatch.setattr(weights_lib, "PACKAGED_DIR", tmp_path)
    registry_with(entry("resnet20_gn.shipped", classes=10, packaged="r20.weights.h5",
                       sha256=sha256(tmp_path / "r20.weights.h5")))
    with open(tmp_path / "r20.weights.h5", "r+b") as f:
        f.seek(4000)
        f.write(b"\xff" * 16)
    with pytest.raises(ValueError, match=r"r20.weights.h5 of resnet20_gn.shipped are corrupt: their sha256 "
                                         r"[0-9a-f]{64} is not the registered .*Reinstall keras-gn"):
        zoo.resnet20_gn(weights="shipped")


def test_packaged_weights_need_a_sha256(registry_with):
    registry_with(entry("resnet20_gn.unchecked", packaged="r20.weights.h5", verification="trust me"))
    with pytest.raises(ValueError, match="resnet20_gn.unchecked: packaged weights need their sha256"):
        weights_lib.registry()


def test_include_preprocessing(tmp_path, monkeypatch, registry_with):
    zoo.resnet20_gn().save_weights(tmp_path / "r20.weights.h5")
    monkeypatch.setattr(weights_lib, "PACKAGED_DIR", tmp_path)
    digest = sha256(tmp_path / "r20.weights.h5")
    inside = dict(color="RGB", scale=255.0, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], inside_model=True)
    registry_with(entry("resnet20_gn.inside", classes=10, packaged="r20.weights.h5", sha256=digest,
                        preprocessing=inside),
                  entry("resnet20_gn.outside", classes=10, packaged="r20.weights.h5", sha256=digest,
                        preprocessing=dict(color="BGR", scale=1.0, mean=[1, 2, 3], std=[1, 1, 1])))
    # None follows the weights: inside the model only for weights trained so.
    layer = zoo.resnet20_gn(weights="inside").get_layer("preprocessing")
    assert (layer.color, layer.mean, layer.std) == ("RGB", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    assert "preprocessing" not in [x.name for x in zoo.resnet20_gn(weights="outside").layers]
    assert "preprocessing" not in [x.name for x in zoo.resnet20_gn(weights="inside", include_preprocessing=False).layers]
    # True adds any registered weights' preprocess_input as a layer.
    model = zoo.resnet20_gn(weights="outside", include_preprocessing=True)
    images = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model.get_layer("preprocessing")(images),
                               zoo.preprocess_input(images, "resnet20_gn.outside"), rtol=1e-6)
    with pytest.raises(ValueError, match=r"include_preprocessing=True needs registered weights .* weights=None"):
        zoo.resnet20_gn(include_preprocessing=True)
    with pytest.raises(ValueError, match=r"include_preprocessing=True needs registered weights"):
        zoo.vgg16_cifar_gn(include_preprocessing=True)


def test_preprocessing_layer_channels_first_and_serialization():
    import keras

    layer = zoo.Preprocessing("BGR", 255.0, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), data_format="channels_first")
    images = np.random.default_rng(3).uniform(0, 255, (2, 3, 4, 4)).astype("float32")
    expected = (images[:, ::-1] / 255 - np.array([0.1, 0.2, 0.3])[:, None, None]) / 0.5
    np.testing.assert_allclose(layer(images), expected, rtol=1e-5, atol=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert clone.get_config() == layer.get_config() and clone.data_format == "channels_first"
    with pytest.raises(ValueError, match="data_format='NHWC' is not one of 'channels_last', 'channels_first'"):
        zoo.Preprocessing(data_format="NHWC")


def test_preprocess_input():
    images = np.random.default_rng(2).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    detectron = np.asarray(zoo.preprocess_input(images, "resnet50_gn.in1k_detectron"))
    np.testing.assert_allclose(detectron, images[..., ::-1] - [102.9801, 115.9465, 122.7717], rtol=1e-6, atol=1e-4)
    timm = np.asarray(zoo.preprocess_input(images, "resnet50_gn.a1h_in1k"))
    np.testing.assert_allclose(timm, (images / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], rtol=1e-5, atol=1e-5)
    tensorpack = np.asarray(zoo.preprocess_input(images, "resnet50_gn.in1k_tensorpack"))
    bgr = images[..., ::-1]
    np.testing.assert_allclose(tensorpack, (bgr - np.array([0.406, 0.456, 0.485]) * 255) / (np.array([0.225, 0.224, 0.229]) * 255),
                               rtol=1e-5, atol=1e-5)
    first = np.asarray(zoo.preprocess_input(images.transpose(0, 3, 1, 2), "resnet50_gn.a1h_in1k", "channels_first"))
    np.testing.assert_allclose(first, timm.transpose(0, 3, 1, 2), rtol=1e-6)


def test_weights_fix_the_grouping_they_were_trained_with(tmp_path, monkeypatch, registry_with):
    zoo.resnet20_gn().save_weights(tmp_path / "r20.weights.h5")
    monkeypatch.setattr(weights_lib, "PACKAGED_DIR", tmp_path)
    digest = sha256(tmp_path / "r20.weights.h5")
    registry_with(entry("resnet20_gn.by_size", classes=10, packaged="r20.weights.h5", sha256=digest,
                        builder_args={"group_size": 8}),
                  entry("resnet20_gn.default", classes=10, packaged="r20.weights.h5", sha256=digest))
    model = zoo.resnet20_gn(weights="by_size")
    assert [model.get_layer(n).groups for n in ("conv1_norm", "conv3_block1_1_norm", "conv4_block1_1_norm")] == [2, 4, 8]
    assert zoo.resnet20_gn(weights="by_size", group_size=8).get_layer("conv4_block1_1_norm").groups == 8
    with pytest.raises(ValueError, match=r"'resnet20_gn.by_size' were trained with group_size=8, not groups=2: "
                                         r"leave groups and group_size unset \(or pass group_size=8\)"):
        zoo.resnet20_gn(weights="by_size", groups=2)
    # No builder_args: the paper's 32 groups (8 / 16 / 32 for ResNet-20's widths).
    assert zoo.resnet20_gn(weights="default").get_layer("conv4_block1_1_norm").groups == 32
    with pytest.raises(ValueError, match="trained with groups=32, not group_size=4"):
        zoo.resnet20_gn(weights="default", group_size=4)
    # Without registered weights any grouping goes.
    assert zoo.resnet20_gn(groups=4).get_layer("conv1_norm").groups == 4


def test_weights_fix_the_weight_standardization_they_were_trained_with(tmp_path, monkeypatch, registry_with):
    ws = zoo.resnet20_gn(groups=2, weight_standardization=True)
    ws.save_weights(tmp_path / "r20_ws.weights.h5")
    monkeypatch.setattr(weights_lib, "PACKAGED_DIR", tmp_path)
    registry_with(entry("resnet20_gn.ws", classes=10, packaged="r20_ws.weights.h5",
                        sha256=sha256(tmp_path / "r20_ws.weights.h5"),
                        builder_args={"groups": 2, "weight_standardization": True}))
    for model in (zoo.resnet20_gn(weights="ws"), zoo.resnet20_gn(weights="ws", weight_standardization=True)):
        assert isinstance(model.get_layer("conv4_block3_2_conv"), keras_gn.WeightStandardizedConv2D)
        x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
        np.testing.assert_allclose(model.predict(x, verbose=0), ws.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    features = zoo.resnet20_gn(weights="ws", include_top=False)  # loaded through a full model
    np.testing.assert_array_equal(features.get_layer("conv1_conv").kernel, ws.get_layer("conv1_conv").kernel)
    with pytest.raises(ValueError, match=r"'resnet20_gn.ws' were trained with weight_standardization=True, not "
                                         r"False: leave weight_standardization unset \(or pass True\)"):
        zoo.resnet20_gn(weights="ws", weight_standardization=False)


def test_unknown_builder_args_are_rejected(registry_with):
    registry_with(entry("resnet20_gn.odd", url="http://x/y.h5", filename="y.h5", sha256="0" * 64,
                        builder_args={"epsilon": 1e-3}))
    with pytest.raises(ValueError, match=r"builder_args \['epsilon'\] are not among "
                                         r"\('groups', 'group_size', 'weight_standardization'\)"):
        weights_lib.registry()
