"""Tests of `train.publish`: a real (tiny) training run is measured, written
into a temporary zoo registry and loaded back through the zoo builder; runs
that cannot be shipped are refused with the reason."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest

import keras_gn
import zoo
from tests.train.test_app import ENV
from tests.train.test_app import SMOKE
from tests.train.test_app import train
from train import publish as publish_lib
from zoo import download
from zoo import weights as weights_lib

pytestmark = pytest.mark.slow  # every test trains and publishes a run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One epoch on the 1024 fake images (the whole split is evaluated),
    with GN's grouping other than the builders' default."""
    model_dir = tmp_path_factory.mktemp("run")
    train(*SMOKE, "--groups=4", "--per_replica_batch_size=256", "--epochs=1", "--nodecay_norm_parameters",
          f"--model_dir={model_dir}")
    return model_dir


@pytest.fixture
def zoo_dirs(tmp_path, monkeypatch):
    """The registry (a copy of the real one) and pretrained/ in tmp_path."""
    registry = tmp_path / "weights_registry.json"
    shutil.copy(weights_lib.REGISTRY_FILE, registry)
    monkeypatch.setattr(weights_lib, "REGISTRY_FILE", registry)
    monkeypatch.setattr(weights_lib, "PACKAGED_DIR", tmp_path / "pretrained")
    weights_lib.registry.cache_clear()
    yield registry, tmp_path / "pretrained"
    weights_lib.registry.cache_clear()


def run_copy(finished_run, tmp_path, **flag_changes):
    model_dir = tmp_path / "copy"
    shutil.copytree(finished_run, model_dir)
    results = json.loads((model_dir / "results.json").read_text())
    results["flags"].update(flag_changes)
    (model_dir / "results.json").write_text(json.dumps(results))
    return model_dir


def test_a_run_is_measured_registered_and_loadable(finished_run, zoo_dirs):
    registry, pretrained = zoo_dirs
    run = json.loads((finished_run / "results.json").read_text())
    entry = publish_lib.publish(str(finished_run), "fake", dataset_name="fake", default_for="cifar10")

    assert entry["tag"] == "resnet20_gn.fake" and entry["packaged"] == "resnet20_gn.fake.weights.h5"
    assert entry["metric"]["top1_accuracy"] == pytest.approx(100 * run["history"][-1]["val_accuracy"], abs=0.05)
    assert entry["sha256"] == weights_lib.sha256_of(pretrained / entry["packaged"])
    assert entry["preprocessing"]["inside_model"] and entry["training"]["epochs"] == 1
    assert entry["builder_args"] == {"groups": 4}
    # The flags as given, less the machine's (a False boolean as --no...):
    command = entry["training"]["command"].split()
    assert command[:3] == ["python", "-m", "train"] and sorted(command[3:]) == sorted(
        ["--model=resnet20_gn", "--fake_data", "--groups=4", "--per_replica_batch_size=256", "--epochs=1",
         "--nodecay_norm_parameters"])
    assert [r for r in json.loads(registry.read_text()) if r["tag"] == "resnet20_gn.fake"] == [entry]

    model = zoo.resnet20_gn(weights="cifar10")  # the default for cifar10 now
    assert isinstance(model.get_layer("preprocessing"), zoo.Preprocessing)
    assert {model.get_layer(name).groups for name in ("conv1_norm", "conv4_block3_2_norm")} == {4}
    with pytest.raises(ValueError, match=r"weights 'resnet20_gn.fake' were trained with groups=4, not groups=32"):
        zoo.resnet20_gn(weights="fake", groups=32)
    assert model.get_layer("preprocessing").mean == tuple(entry["preprocessing"]["mean"])
    features = zoo.resnet20_gn(weights="fake", include_top=False, pooling="avg")
    assert features.layers[1].name == "preprocessing" and features.output_shape == (None, 64)
    plain = zoo.resnet20_gn(weights="fake", include_preprocessing=False)
    assert "preprocessing" not in [layer.name for layer in plain.layers]
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    normalized = (images / 255 - np.array(entry["preprocessing"]["mean"])) / entry["preprocessing"]["std"]
    np.testing.assert_allclose(plain.predict_on_batch(normalized), model.predict_on_batch(images), atol=1e-5)


def test_float16_storage_halves_the_file_and_registers_what_it_reaches(finished_run, zoo_dirs):
    _, pretrained = zoo_dirs
    full = publish_lib.publish(str(finished_run), "fake32", dataset_name="fake")
    half = publish_lib.publish(str(finished_run), "fake16", dataset_name="fake", storage_dtype="float16")

    full_file, half_file = pretrained / full["packaged"], pretrained / half["packaged"]
    assert half_file.stat().st_size < 0.6 * full_file.stat().st_size
    with h5py.File(half_file, "r") as stored:
        arrays = []
        stored.visititems(lambda name, item: arrays.append(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert arrays and set(arrays) == {np.dtype("float16")}
    assert half["metric"]["top1_accuracy_float32_weights"] == full["metric"]["top1_accuracy"]
    assert "weights stored as float16" in half["metric"]["evaluation"]
    assert "top1_accuracy_float32_weights" not in full["metric"] and "float16" not in full["metric"]["evaluation"]
    # The shipped file gives back the float32 weights rounded to float16,
    # in float32 variables (the accuracy registered is measured on these):
    loaded_full, loaded_half = (zoo.resnet20_gn(weights=tag, classes=full["classes"]) for tag in ("fake32", "fake16"))
    for float32, rounded in zip(loaded_full.weights, loaded_half.weights, strict=True):
        assert rounded.dtype == "float32"
        np.testing.assert_array_equal(rounded.numpy(), float32.numpy().astype(np.float16).astype(np.float32))


def test_weights_beyond_float16s_range_are_refused():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="head")])
    model.get_layer("head").kernel.assign([[1.0], [7e4]])
    with pytest.raises(publish_lib.PublishError, match=r"head/kernel has values beyond float16's range "
                                                       r"\(largest magnitude 7e\+04\): publish with "
                                                       r"--storage_dtype=float32"):
        publish_lib.round_weights(model, "float16")


def test_an_unknown_storage_dtype_is_refused(finished_run, zoo_dirs):
    with pytest.raises(publish_lib.PublishError, match=r"storage_dtype='int8' is not one of \('float32', "
                                                       r"'float16'\)"):
        publish_lib.publish(str(finished_run), "fake", storage_dtype="int8")


def test_an_older_run_without_its_command_gets_one_from_its_flags(finished_run, zoo_dirs, tmp_path):
    model_dir = run_copy(finished_run, tmp_path)
    results = json.loads((model_dir / "results.json").read_text())
    del results["command_flags"]
    (model_dir / "results.json").write_text(json.dumps(results))
    command = publish_lib.publish(str(model_dir), "fake")["training"]["command"]
    assert "--groups=4" in command and "--model_dir" not in command


def test_publishing_again_replaces_the_entry(finished_run, zoo_dirs):
    registry, _ = zoo_dirs
    publish_lib.publish(str(finished_run), "fake", dataset_name="fake")
    publish_lib.publish(str(finished_run), "fake", dataset_name="fake", notes="Trained on random labels.")
    records = [r for r in json.loads(registry.read_text()) if r["tag"] == "resnet20_gn.fake"]
    assert len(records) == 1
    assert records[0]["notes"] == ("The model normalizes its own inputs: give it RGB values in [0, 255]. "
                                   "Trained on random labels.")


def test_a_release_url_entry_is_written_for_upload_and_downloads_from_there(
        finished_run, zoo_dirs, tmp_path, file_server, weights_cache):
    registry, pretrained = zoo_dirs
    publish_lib.publish(str(finished_run), "fake", dataset_name="fake")
    packaged = zoo.resnet20_gn(weights="fake")
    dist = tmp_path / "dist"
    entry = publish_lib.publish(str(finished_run), "fake", dataset_name="fake", release_url=f"{file_server.url}/v1/",
                                output_dir=str(dist))

    filename = "resnet20_gn.fake.weights.h5"
    assert "packaged" not in entry and entry["filename"] == filename
    assert entry["url"] == f"{file_server.url}/v1/{filename}"
    assert entry["sha256"] == weights_lib.sha256_of(dist / filename)
    assert [r for r in json.loads(registry.read_text()) if r["tag"] == "resnet20_gn.fake"] == [entry]
    assert not (pretrained / filename).exists()  # the packaged file the entry no longer names
    assert "KERAS_GN_WEIGHTS_MIRROR" not in os.environ and file_server.requests == []  # checked from dist/

    # A user's first load, after the upload: from the URL, into the cache.
    shutil.rmtree(weights_cache)
    (file_server.root / "v1").mkdir()
    shutil.copy(dist / filename, file_server.root / "v1")
    downloaded = zoo.resnet20_gn(weights="fake")
    assert file_server.requests == [f"/v1/{filename}"] and (weights_cache / filename).exists()
    for expected, actual in zip(packaged.weights, downloaded.weights, strict=True):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy())


def test_a_release_url_that_is_not_http_is_refused_before_measuring(zoo_dirs):
    with pytest.raises(publish_lib.PublishError, match=r"release_url='dist/weights' is not an http\(s\) URL"):
        publish_lib.publish("no-such-run", "fake", release_url="dist/weights")


def test_a_failed_reload_leaves_the_registry_as_it_was(finished_run, zoo_dirs, tmp_path, weights_cache,
                                                      monkeypatch):
    registry, _ = zoo_dirs
    before = registry.read_text()
    # The reload's mirror serves nothing, as when the file was not written:
    real_mirror = download.mirrored_from
    monkeypatch.setattr(download, "mirrored_from", lambda directory: real_mirror(tmp_path / "empty"))
    with pytest.raises(download.DownloadError, match="Could not get the weight file resnet20_gn.fake.weights.h5"):
        publish_lib.publish(str(finished_run), "fake", release_url="https://example.org/v1",
                            output_dir=str(tmp_path / "dist"))
    assert registry.read_text() == before


@pytest.mark.parametrize("metric, change", [
    # The run's record says 20 points more than these weights reach (as when
    # final.weights.h5 was overwritten, or another run's data is given).
    ("val_accuracy", 0.2),
    # The same accuracy, but a loss 0.01 apart: other weights can tie on
    # accuracy (a model that predicts one class always does).
    ("val_loss", 0.01),
])
def test_weights_that_are_not_the_runs_are_refused(finished_run, zoo_dirs, tmp_path, metric, change):
    registry, _ = zoo_dirs
    before = registry.read_text()
    model_dir = run_copy(finished_run, tmp_path)
    results = json.loads((model_dir / "results.json").read_text())
    results["history"][-1][metric] += change
    (model_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(publish_lib.PublishError, match="these are not the weights the run evaluated"):
        publish_lib.publish(str(model_dir), "fake")
    assert registry.read_text() == before


@pytest.mark.parametrize("changes, message", [
    (dict(norm="bn"), r"--norm=bn; the zoo ships GN weights"),
    # Weights evaluated with a grouping they were not trained with:
    (dict(groups=16), "these are not the weights the run evaluated"),
    # ... or with Weight Standardization they were trained without (their
    # layers differ, so they do not even load):
    (dict(weight_standardization=True), "does not fit the model that results.json describes"),
    (dict(init="resnet50_gn.in1k_detectron"), "fine-tuned from --init=resnet50_gn.in1k_detectron"),
    (dict(steps_per_epoch=4), r"smoke run \(--steps_per_epoch=4\)"),
])
def test_runs_that_cannot_be_shipped(finished_run, zoo_dirs, tmp_path, changes, message):
    with pytest.raises(publish_lib.PublishError, match=message):
        publish_lib.publish(str(run_copy(finished_run, tmp_path, **changes)), "fake")


@pytest.mark.parametrize("arch, conv, replicas", [
    ("resnet20_gn", "conv1_conv", 1),
    ("vgg16_cifar_gn", "block1_conv1", 8),  # the zoo's VGG-16-GN weights are trained this way
])
def test_a_weight_standardized_run_ships_with_it(tmp_path, zoo_dirs, arch, conv, replicas):
    distribute = ["--strategy=mirrored", f"--num_cpu_devices={replicas}"] if replicas > 1 else []
    train(*SMOKE, f"--model={arch}", "--weight_standardization", "--groups=4", *distribute,
          f"--per_replica_batch_size={256 // replicas}", "--epochs=1", f"--model_dir={tmp_path / 'ws'}")
    entry = publish_lib.publish(str(tmp_path / "ws"), "fake_ws", dataset_name="fake")
    assert entry["tag"] == f"{arch}.fake_ws" and entry["training"]["replicas"] == replicas
    assert entry["builder_args"] == {"groups": 4, "weight_standardization": True}
    assert "--weight_standardization" in entry["training"]["command"].split()
    model = zoo.get_model(arch)(weights="fake_ws")
    assert isinstance(model.get_layer(conv), keras_gn.WeightStandardizedConv2D)


def test_an_unfinished_run_says_so(tmp_path, zoo_dirs):
    with pytest.raises(publish_lib.PublishError, match="is not a finished `python -m train` run"):
        publish_lib.publish(str(tmp_path), "fake")


FINE_TUNE_FROM_PUBLISHED = textwrap.dedent("""
    import pathlib, sys
    from absl import flags
    from zoo import weights as weights_lib
    weights_lib.REGISTRY_FILE, weights_lib.PACKAGED_DIR = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    import zoo
    from train import app, recipe
    flags.FLAGS(["train", "--model=resnet20_gn", "--fake_data", "--init=resnet20_gn.fake"])
    model = app.build_model(recipe.CIFAR, 10)

    def preprocessing_layers(model):
        for layer in model.layers:
            if isinstance(layer, zoo.Preprocessing):
                yield layer
            elif hasattr(layer, "layers"):
                yield from preprocessing_layers(layer)

    print("PREPROCESSING", len(list(preprocessing_layers(model))))
""")


def test_fine_tuning_from_published_weights_normalizes_once(finished_run, zoo_dirs):
    registry, pretrained = zoo_dirs
    publish_lib.publish(str(finished_run), "fake", dataset_name="fake")
    result = subprocess.run([sys.executable, "-c", FINE_TUNE_FROM_PUBLISHED, str(registry), str(pretrained)],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "PREPROCESSING 1" in result.stdout


def test_command_line(tmp_path):
    command = [sys.executable, "-m", "train.publish"]
    usage = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert usage.returncode != 0 and "--model_dir and --tag are required" in usage.stderr
    missing = subprocess.run(command + [f"--model_dir={tmp_path}", "--tag=x"], capture_output=True, text=True,
                             env=ENV, timeout=300)
    assert missing.returncode == 1 and "is not a finished `python -m train` run" in missing.stderr
    not_a_url = subprocess.run(command + [f"--model_dir={tmp_path}", "--tag=x", "--release_url=dist"],
                               capture_output=True, text=True, env=ENV, timeout=300)
    assert not_a_url.returncode == 1 and "release_url='dist' is not an http(s) URL" in not_a_url.stderr
