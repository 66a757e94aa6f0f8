"""The converters, proven numerically: each source format is written from an
independent PyTorch reference network with random weights, converted, and
the Keras model must reproduce the reference's logits. A layout, padding or
stride error changes the logits by far more than the tolerance."""

import hashlib
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo import common
from zoo import convert
from zoo import download

torch = pytest.importorskip("torch", reason="the reference network needs torch (pip install torch)")
from tests.zoo import torch_reference as ref  # noqa: E402

pytestmark = pytest.mark.slow  # ResNet-50s built and converted against a torch network

SUFFIX = {"timm": ".pth", "detectron": ".pkl", "tensorpack": ".npz"}
SIZE = 64  # stride 32: a 2x2 final feature map, every padding choice matters


@pytest.fixture(scope="module")
def reference():
    model = ref.random_model(seed=1)
    images = np.random.default_rng(2).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    return model, images, ref.logits(model, images)


def keras_logits(weights_path, images, arch="resnet50_gn"):
    model = zoo.get_model(arch)(weights=str(weights_path), input_shape=images.shape[1:],
                                classifier_activation=None)
    return model.predict(images, verbose=0)


@pytest.mark.parametrize("source", sorted(ref.WRITERS))  # the ResNet v1 formats (BiT: test_bit.py)
def test_converted_weights_reproduce_the_reference(source, reference, tmp_path):
    model, images, expected = reference
    original = tmp_path / f"weights{SUFFIX[source]}"
    ref.WRITERS[source](model, original)
    output = convert.convert_file(source, original, "resnet50_gn", tmp_path / "out.weights.h5")
    # float32 through 53 layers: ~1e-5 relative to logits of order 1.
    np.testing.assert_allclose(keras_logits(output, images), expected, rtol=1e-4, atol=1e-4)


def test_resnet101_layer_counts(tmp_path):
    model = ref.random_model(stage_blocks=(3, 4, 23, 3), seed=3)
    ref.write_detectron(model, tmp_path / "r101.pkl")
    images = np.random.default_rng(4).normal(size=(1, SIZE, SIZE, 3)).astype("float32")
    output = convert.convert_file("detectron", tmp_path / "r101.pkl", "resnet101_gn", tmp_path / "r101.weights.h5")
    np.testing.assert_allclose(keras_logits(output, images, "resnet101_gn"), ref.logits(model, images),
                               rtol=1e-4, atol=1e-4)


def test_same_padding_would_break_the_weights(reference, tmp_path, monkeypatch):
    """The check is sensitive: Keras "same" padding (asymmetric at stride 2)
    in place of the explicit symmetric padding gives other logits."""
    model, images, expected = reference
    ref.write_timm(model, tmp_path / "w.pth")
    output = convert.convert_file("timm", tmp_path / "w.pth", "resnet50_gn", tmp_path / "w.weights.h5")

    def same_padding_conv(x, filters, kernel_size, strides=1, name=None, weight_standardization=False):
        import keras
        return keras.layers.Conv2D(filters, kernel_size, strides, padding="same", use_bias=False, name=name)(x)

    monkeypatch.setattr(common, "padded_conv", same_padding_conv)
    assert np.abs(keras_logits(output, images) - expected).max() > 1e-2


def test_stride_on_the_1x1_would_break_the_weights(reference, tmp_path):
    """Detectron's MSRA-style STRIDE_1X1 reference gives other logits than
    the converted (stride on 3x3) model."""
    model, images, expected = reference
    ref.write_timm(model, tmp_path / "w.pth")
    output = convert.convert_file("timm", tmp_path / "w.pth", "resnet50_gn", tmp_path / "w.weights.h5")
    for stage in (2, 3, 4):
        block = getattr(model, f"layer{stage}")[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    assert np.abs(keras_logits(output, images) - ref.logits(model, images)).max() > 1e-2


def test_wrong_or_incomplete_file_is_a_clear_error(reference, tmp_path):
    model, _, _ = reference
    ref.write_tensorpack(model, tmp_path / "w.npz")
    with pytest.raises(ValueError, match=r"is not a tensorpack resnet101_gn weights file: .*missing arrays"):
        convert.read_source("tensorpack", tmp_path / "w.npz", "resnet101_gn")
    arrays = dict(np.load(tmp_path / "w.npz"))
    arrays["conv0/W"] = arrays.pop("conv0/W:0", arrays.get("conv0/W"))[:, :, :, :32]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"1 arrays of unexpected shape \(e.g. \['conv0/W: \(7, 7, 3, 32\)'\]\)"):
        convert.read_source("tensorpack", tmp_path / "bad.npz", "resnet50_gn")
    with pytest.raises(ValueError, match="arch='resnet18_gn' has no public GN weights to convert"):
        convert.layer_map("timm", "resnet18_gn")
    with pytest.raises(ValueError, match=r"source='caffe' is not one of"):
        convert.layer_map("caffe", "resnet50_gn")


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_cannot_run_code(tmp_path):
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"blobs": {"conv1_w": _Exploit()}}, f, protocol=2)
    with pytest.raises(ValueError, match=r"evil.pkl is not a readable detectron weights file: "
                                         r"(__builtin__|builtins).print is not allowed in a weights file"):
        convert.read_source("detectron", tmp_path / "evil.pkl", "resnet50_gn")
    torch.save({"x": _Exploit()}, tmp_path / "evil.pth", pickle_protocol=2)
    with pytest.raises(ValueError, match=r"evil.pth is not a readable torch.save weights file: "
                                         r"(__builtin__|builtins).print is not allowed in a weights file"):
        convert.readers.read_timm(tmp_path / "evil.pth")


def test_torch_files_are_read_without_torch(tmp_path):
    state = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # non-contiguous
             "b": torch.tensor([1.5, 2.5], dtype=torch.float16), "c": torch.tensor([7], dtype=torch.int64)}
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch fails
            "from zoo.convert.readers import read_timm\n"
            f"w = read_timm({str(tmp_path / 'w.pth')!r})\n"
            "print(w['a'].tolist(), w['b'].dtype, w['c'].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{state['a'].tolist()} float16 [7]"


def test_command_line(reference, tmp_path):
    model, images, expected = reference
    ref.write_detectron(model, tmp_path / "R-50-GN.pkl")
    result = subprocess.run(
        [sys.executable, "-m", "zoo.convert", "--source=detectron", f"--input={tmp_path / 'R-50-GN.pkl'}",
         "--arch=resnet50_gn", f"--output={tmp_path / 'r50.weights.h5'}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Converted detectron" in result.stdout
    np.testing.assert_allclose(keras_logits(tmp_path / "r50.weights.h5", images), expected, rtol=1e-4, atol=1e-4)


def test_registry_tag_downloads_converts_and_caches(reference, file_server, registry_with, weights_cache):
    """weights="<tag>" for a timm-format entry with only a sha256 prefix
    known: download over HTTP, check the prefix and the contents, convert,
    cache the converted file, reproduce the reference logits."""
    from tests.zoo.conftest import entry

    model, images, expected = reference
    served = file_server.root / "resnet50_gn_test.pth"
    ref.write_timm(model, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    record = entry("resnet50_gn.test_timm", format="timm", url=f"{file_server.url}/{served.name}",
                   filename=served.name, sha256_prefix=digest[:8], verification="prefix and contents")
    registry_with(record)
    model_gn = zoo.resnet50_gn(weights="test_timm", input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    np.testing.assert_allclose(model_gn.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)
    assert (weights_cache / "resnet50_gn.test_timm.weights.h5").exists()
    zoo.resnet50_gn(weights="test_timm", include_top=False)  # from the converted cache
    assert len(file_server.requests) == 1

    # A truncated download (no full sha256 to catch it) fails the content
    # check, is deleted and fetched again; a server that keeps serving a bad
    # file gives an error.
    (weights_cache / "resnet50_gn.test_timm.weights.h5").unlink()
    (weights_cache / served.name).write_bytes(served.read_bytes()[:5000])
    zoo.resnet50_gn(weights="test_timm")
    assert len(file_server.requests) == 2
    # A converted file damaged in the cache (a conversion killed before
    # conversions were written atomically) is converted again.
    converted = weights_cache / "resnet50_gn.test_timm.weights.h5"
    converted.write_bytes(converted.read_bytes()[:4000])
    model_gn = zoo.resnet50_gn(weights="test_timm", input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    np.testing.assert_allclose(model_gn.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)
    assert len(file_server.requests) == 2
    (weights_cache / "resnet50_gn.test_timm.weights.h5").unlink()
    registry_with(dict(record, sha256_prefix="00000000"))
    with pytest.raises(download.DownloadError, match="does not start with the published 00000000"):
        zoo.resnet50_gn(weights="test_timm")


# ------------------------------------------------ crafted and damaged files


class _Storage:
    def __init__(self, numel):
        self.numel = numel


class _Tensor:
    """Pickles as torch's tensor record, with any offset, size and stride."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        import collections

        return torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
        return None


def _crafted_pth(path, offset, size, stride, stored=4, declared=4):
    """A torch.save-style zip whose one tensor 'weight' has the given record
    over a storage of `stored` float32 values that declares `declared`."""
    import io
    import zipfile

    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump({"weight": _Tensor(_Storage(declared), offset, size, stride)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", np.arange(stored, dtype="<f4").tobytes())


@pytest.mark.parametrize("offset, size, stride, message", [
    (0, (256,), (1,), r"need 256 elements, its storage has 4"),
    (3, (2,), (1,), r"need 5 elements, its storage has 4"),
    (0, (2, 2), (3, 1), r"need 5 elements, its storage has 4"),
    (0, (4,), (-1,), r"negative offset, size or stride"),
    (-2, (2,), (1,), r"negative offset, size or stride"),
    (0, (2, 2), (1,), r"differ in rank"),
])
def test_a_tensor_outside_its_storage_is_refused(tmp_path, offset, size, stride, message):
    path = tmp_path / "crafted.pth"
    _crafted_pth(path, offset, size, stride)
    with pytest.raises(ValueError, match=rf"crafted.pth: tensor 'weight' is invalid: .*{message}"):
        convert.readers.read_timm(path)


def test_in_bounds_records_read_their_values(tmp_path):
    _crafted_pth(tmp_path / "ok.pth", 1, (2, 2), (0, 2))  # a zero stride repeats a row
    np.testing.assert_array_equal(convert.readers.read_timm(tmp_path / "ok.pth")["weight"], [[1, 3], [1, 3]])


def test_a_storage_shorter_than_it_declares_is_refused(tmp_path):
    _crafted_pth(tmp_path / "short.pth", 0, (4,), (1,), stored=2, declared=4)
    with pytest.raises(ValueError, match=r"short.pth is not a readable torch.save weights file: "
                                         r"storage 0 declares 4 elements but holds 2"):
        convert.readers.read_timm(tmp_path / "short.pth")


class _ArrayWithoutData:
    """Pickles as NumPy's array constructor with no state: the array would
    be NumPy's uninitialised memory."""

    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (1000,), np.dtype("float32"))


def test_a_detectron_array_without_data_is_refused(tmp_path):
    with open(tmp_path / "hollow.pkl", "wb") as f:
        pickle.dump({"blobs": {"conv1_w": _ArrayWithoutData()}}, f, protocol=2)
    with pytest.raises(ValueError, match=r"hollow.pkl is not a readable detectron weights file: "
                                         r"array 'conv1_w' has no data in the file"):
        convert.readers.read("detectron", tmp_path / "hollow.pkl")
    with open(tmp_path / "objects.pkl", "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.array([1, "a"], dtype=object)}}, f, protocol=2)
    with pytest.raises(ValueError, match=r"array 'conv1_w' holds object values, not numbers"):
        convert.readers.read("detectron", tmp_path / "objects.pkl")


@pytest.mark.parametrize("source", sorted(ref.WRITERS))  # the ResNet v1 formats (BiT: test_bit.py)
def test_truncated_files_get_an_error_naming_them(source, reference, tmp_path):
    model, _, _ = reference
    whole = tmp_path / f"whole{SUFFIX[source]}"
    ref.WRITERS[source](model, whole)
    cut = tmp_path / f"cut{SUFFIX[source]}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(ValueError, match=rf"{cut.name} is not a readable (torch.save|{source}) weights file: "):
        convert.read_source(source, cut, "resnet50_gn")
    with pytest.raises(ValueError, match=r"missing.pkl does not exist"):
        convert.read_source(source, tmp_path / "missing.pkl", "resnet50_gn")


def test_the_command_line_says_what_is_wrong_with_a_file_in_one_line(tmp_path):
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x02not a pickle at all")
    result = subprocess.run(
        [sys.executable, "-m", "zoo.convert", "--source=detectron", f"--input={tmp_path / 'garbage.pkl'}",
         f"--output={tmp_path / 'out.weights.h5'}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert f"Error: {tmp_path / 'garbage.pkl'} is not a readable detectron weights file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.weights.h5").exists()


def test_a_conversion_killed_while_writing_leaves_no_file(reference, tmp_path, monkeypatch):
    import keras

    model, _, _ = reference
    ref.write_tensorpack(model, tmp_path / "w.npz")

    def killed_while_writing(self, filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save_weights", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_file("tensorpack", tmp_path / "w.npz", "resnet50_gn", tmp_path / "out.weights.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]
