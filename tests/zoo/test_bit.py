"""The BiT models (`zoo.resnetv2`) and their converters, proven against timm.

Random weights are written in BiT's npz layout and loaded into timm's
`ResNetV2` by timm's own BiT loader (`load_pretrained`, `_load_weights`), and
into the zoo model by `zoo.convert`; timm state dicts (`torch.save`,
safetensors) of randomly initialised timm models likewise. The logits must
agree within 1e-4 at two input sizes, odd feature-map sizes included: a
layout, padding, stride, epsilon or stem error moves them by far more.
timm is imported without torchvision where needed (`timm_reference`).
"""

import copy
import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_gn
import zoo
from tests.zoo import timm_reference
from tests.zoo.conftest import entry
from zoo import convert
from zoo import finetune
from zoo import weights as weights_lib
from zoo.convert import safetensors

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLASSES = 10
TOLERANCE = 1e-4  # float32 through ~50 layers: measured 2e-5 to 3e-5 on logits of order 1


# ---------------------------------------------------------------- writers


def write_bit_npz(path, stage_blocks=(3, 4, 6, 3), width_factor=1, classes=CLASSES, seed=0, drop=(),
                  replace=None):
    """Random weights in BiT's npz layout (google-research/big_transfer:
    `resnet/block{s}/unit{u:02d}/{a,b,c}/...`, HWIO kernels), written from
    BiT's variable scopes, not from the converter's table."""
    rng = np.random.default_rng(seed)
    arrays = {}

    def conv(scope, size, cin, cout):
        arrays[f"{scope}/standardized_conv2d/kernel"] = rng.normal(size=(size, size, cin, cout)).astype("f4")

    def gn(scope, channels):
        arrays[f"{scope}/group_norm/gamma"] = (1 + 0.2 * rng.normal(size=channels)).astype("f4")
        arrays[f"{scope}/group_norm/beta"] = (0.2 * rng.normal(size=channels)).astype("f4")

    cin = 64 * width_factor
    conv("resnet/root_block", 7, 3, cin)
    for stage, units in enumerate(stage_blocks):
        cout = 256 * 2 ** stage * width_factor
        for unit in range(units):
            scope = f"resnet/block{stage + 1}/unit{unit + 1:02d}"
            gn(f"{scope}/a", cin)
            conv(f"{scope}/a", 1, cin, cout // 4)
            if unit == 0:
                conv(f"{scope}/a/proj", 1, cin, cout)
            gn(f"{scope}/b", cout // 4)
            conv(f"{scope}/b", 3, cout // 4, cout // 4)
            gn(f"{scope}/c", cout // 4)
            conv(f"{scope}/c", 1, cout // 4, cout)
            cin = cout
    gn("resnet", cin)
    arrays["resnet/head/conv2d/kernel"] = (rng.normal(size=(1, 1, cin, classes)) / np.sqrt(cin)).astype("f4")
    arrays["resnet/head/conv2d/bias"] = (0.1 * rng.normal(size=classes)).astype("f4")
    for name in drop:
        del arrays[name]
    arrays.update(replace or {})
    np.savez(path, **arrays)
    return path


def images(size, count=2, seed=1):
    return np.random.default_rng(seed).normal(size=(count, size, size, 3)).astype("float32")


def keras_logits(weights_path, arch, batch, classes=CLASSES):
    model = zoo.get_model(arch)(weights=str(weights_path), classes=classes, input_shape=(None, None, 3),
                                classifier_activation=None)
    return model.predict(batch, verbose=0)


# ---------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def timm_resnetv2():
    module = timm_reference.load()
    if module is None:
        pytest.skip("the timm cross-checks need torch and timm (pip install torch==2.13.0 timm --no-deps)")
    return module


def timm_logits(model, batch):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()


def random_timm(timm_resnetv2, arch, seed=0):
    """timm's model with timm's initialisation, GN and head made random too."""
    import torch

    torch.manual_seed(seed)
    model = getattr(timm_resnetv2, arch)(num_classes=CLASSES).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and not name.startswith("head"):
                p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
            elif name.startswith("head"):
                p.copy_(torch.randn_like(p) / np.sqrt(p.shape[1] if p.ndim > 1 else 10))
    return model


@pytest.fixture(scope="module")
def bit_reference(timm_resnetv2, tmp_path_factory):
    """A random BiT-R50x1 npz, timm's model loaded from it by timm's loader,
    and the zoo's conversion of it."""
    root = tmp_path_factory.mktemp("bit")
    npz = write_bit_npz(root / "BiT-R50x1-random.npz")
    model = timm_resnetv2.resnetv2_50x1_bit(num_classes=CLASSES).eval()
    model.load_pretrained(str(npz))
    converted = convert.convert_file("bit", npz, "resnetv2_50x1_bit", root / "bit.weights.h5")
    return npz, model, converted


@pytest.mark.slow
def test_bit_npz_matches_timm(bit_reference):
    _, model, converted = bit_reference
    for size in (64, 80):  # 80: feature maps of 5 and 3 pixels, odd strided inputs
        batch = images(size)
        expected = timm_logits(model, batch)
        difference = np.abs(keras_logits(converted, "resnetv2_50x1_bit", batch) - expected).max()
        assert difference < TOLERANCE, (size, difference)


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["torch.save", "safetensors"])
def test_timm_state_dict_matches_timm(timm_resnetv2, writer, tmp_path):
    import torch

    model = random_timm(timm_resnetv2, "resnetv2_50x1_bit")
    if writer == "torch.save":
        path = tmp_path / "pytorch_model.bin"
        torch.save(model.state_dict(), path)
    else:
        st = pytest.importorskip("safetensors.torch", reason="writing safetensors needs pip install safetensors")
        path = tmp_path / "model.safetensors"
        st.save_file(model.state_dict(), str(path))
    converted = convert.convert_file("timm", path, "resnetv2_50x1_bit", tmp_path / "w.weights.h5")
    for size in (64, 80):
        batch = images(size)
        difference = np.abs(keras_logits(converted, "resnetv2_50x1_bit", batch) - timm_logits(model, batch)).max()
        assert difference < TOLERANCE, (size, difference)


@pytest.mark.slow
def test_resnetv2_50d_gn_matches_timm(timm_resnetv2, tmp_path):
    import torch

    model = random_timm(timm_resnetv2, "resnetv2_50d_gn")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    converted = convert.convert_file("timm", tmp_path / "w.pth", "resnetv2_50d_gn", tmp_path / "w.weights.h5")
    for size in (64, 72):  # 72: 9-pixel maps into the ceil-mode average-pool shortcut
        batch = images(size)
        difference = np.abs(keras_logits(converted, "resnetv2_50d_gn", batch) - timm_logits(model, batch)).max()
        assert difference < TOLERANCE, (size, difference)


@pytest.mark.slow
def test_the_check_is_sensitive_to_the_stem_padding(bit_reference, timm_resnetv2):
    """timm's model with PyTorch's usual max-pool padding (-inf, not BiT's
    zeros) gives other logits than the zoo model, which matches BiT's."""
    import torch

    _, model, converted = bit_reference
    batch = images(64)
    expected = timm_logits(model, batch)
    model = copy.deepcopy(model)  # the fixture's is shared
    model.stem.pad = torch.nn.Identity()
    model.stem.pool = torch.nn.MaxPool2d(3, 2, padding=1)
    assert np.abs(keras_logits(converted, "resnetv2_50x1_bit", batch) - timm_logits(model, batch)).max() > 1e-2
    assert np.abs(timm_logits(model, batch) - expected).max() > 1e-2


def test_parameter_counts_match_timm(timm_resnetv2):
    for arch in ("resnetv2_50x1_bit", "resnetv2_50d_gn"):
        reference = sum(p.numel() for p in getattr(timm_resnetv2, arch)(num_classes=CLASSES).parameters())
        assert zoo.get_model(arch)(classes=CLASSES).count_params() == reference, arch


# ---------------------------------------------------------------- without timm


@pytest.mark.parametrize("arch, params", [
    ("resnetv2_50x1_bit", 25_549_352),  # timm: 25.55 M (results-imagenet.csv), checked equal above
    ("resnetv2_50d_gn", 25_568_584),  # timm: 25.57 M
])
def test_parameter_counts(arch, params):
    assert zoo.get_model(arch)().count_params() == params


def test_bit_is_bit():
    model = zoo.resnetv2_50x1_bit(input_shape=(64, 64, 3))
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(isinstance(l, keras_gn.WeightStandardizedConv2D) for l in convs)
    assert {l.standardization_epsilon for l in convs} == {1e-8} and not any(l.use_bias for l in convs)
    gn = [l for l in model.layers if isinstance(l, keras_gn.GroupNormalization)]
    assert {l.num_groups for l in gn} == {32} and {l.epsilon for l in gn} == {1e-5}
    assert len(gn) == 16 * 3 + 1  # three per unit, and the final one
    assert model.get_layer("conv1_conv").strides == (2, 2)
    assert model.get_layer("conv1_conv_pad").padding == ((3, 3), (3, 3))
    assert model.get_layer("pool1_pad").padding == ((1, 1), (1, 1))  # zeros before the pool: BiT's "fixed"
    # The stride is on the 3x3 conv and the projection; the shortcut comes from the pre-activated input.
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_0_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_0_conv").input is model.get_layer("conv3_block1_preact_relu").output
    assert not any(l.name.startswith("conv3_block2_0") for l in model.layers)
    wide = zoo.ResNetV2((1, 1, 1, 1), width_factor=2, include_top=False, weight_standardization=True)
    assert wide.get_layer("conv1_conv").filters == 128 and wide.output_shape[-1] == 4096
    assert wide.get_layer("conv5_block1_2_conv").filters == 1024
    assert zoo.default_image_size("resnetv2_50x1_bit") == 224


def test_any_input_size_and_keras_applications_arguments():
    features = zoo.resnetv2_50x1_bit(include_top=False, pooling="avg", weight_standardization=False)
    assert features.input_shape == (None, None, None, 3) and features.output_shape == (None, 2048)
    assert not any(isinstance(l, keras_gn.WeightStandardizedConv2D) for l in features.layers)
    x = np.random.default_rng(0).uniform(0, 255, (1, 40, 56, 3)).astype("float32")
    assert features.predict(x, verbose=0).shape == (1, 2048)
    model = zoo.resnetv2_50d_gn(input_tensor=keras.Input((48, 48, 3)), classes=3)
    assert model.input_shape == (None, 48, 48, 3) and model.output_shape == (None, 3)
    assert not any(isinstance(l, keras_gn.WeightStandardizedConv2D) for l in model.layers)
    assert model.get_layer("conv1_1_norm").num_groups == 32  # one channel a group, as timm's


def test_registered_bit_weights():
    bit = [e for tag, e in weights_lib.registry().items() if tag.startswith("resnetv2_")]
    assert len(bit) == 23
    for e in bit:
        assert e.format in ("bit", "timm") and e.url.startswith("https://")
        assert e.sha256 or e.verification
        assert e.preprocessing.mean == (0.5, 0.5, 0.5) and e.preprocessing.std == (0.5, 0.5, 0.5)
        if e.format == "bit":
            assert e.url.startswith("https://storage.googleapis.com/bit_models/") and e.filename.endswith(".npz")
            assert e.preprocessing.inside_model and e.builder_args == {"weight_standardization": True}
    assert weights_lib.resolve("resnetv2_50x1_bit", "imagenet").filename == "BiT-M-R50x1-ILSVRC2012.npz"
    in21k = zoo.get_weights_info("resnetv2_50x1_bit.goog_in21k")
    assert in21k.classes == 21843 and in21k.filename == "BiT-M-R50x1.npz"
    with pytest.raises(ValueError, match="have a 21843-class classifier but the model has 1000 classes"):
        zoo.resnetv2_50x1_bit(weights="goog_in21k")


def test_bit_preprocessing_is_minus_one_to_one():
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    layer = zoo.Preprocessing.for_weights("resnetv2_50x1_bit.goog_in21k")
    np.testing.assert_allclose(layer(x).numpy(), [[[[-1.0, 0.0, 1.0]]]])


# ---------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    return write_bit_npz(tmp_path_factory.mktemp("npz") / "good.npz")


def test_a_missing_array_is_named(small_npz, tmp_path):
    bad = write_bit_npz(tmp_path / "bad.npz", drop=["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"])
    with pytest.raises(ValueError, match=r"bad.npz is not a bit resnetv2_50x1_bit weights file: 1 missing arrays "
                                         r"\(e.g. \['resnet/block2/unit01/a/proj/standardized_conv2d/kernel'\]\)"):
        convert.read_source("bit", bad, "resnetv2_50x1_bit")


def test_a_wrong_shape_is_named(tmp_path):
    bad = write_bit_npz(tmp_path / "bad.npz", replace={
        "resnet/block1/unit02/b/standardized_conv2d/kernel": np.zeros((3, 3, 64, 32), "f4")})
    with pytest.raises(ValueError, match=r"bad.npz is not a bit resnetv2_50x1_bit weights file: 1 arrays of "
                                         r"unexpected shape \(e.g. \['resnet/block1/unit02/b/standardized_conv2d/"
                                         r"kernel: \(3, 3, 64, 32\)'\]\)"):
        convert.read_source("bit", bad, "resnetv2_50x1_bit")


def test_a_deeper_model_is_refused(small_npz):
    with pytest.raises(ValueError, match=r"good.npz is not a bit resnetv2_101x1_bit weights file: 153 missing "
                                         r"arrays \(e.g. \['resnet/block3/unit07/a/group_norm/gamma'"):
        convert.read_source("bit", small_npz, "resnetv2_101x1_bit")


def test_files_that_are_not_npz_are_refused(tmp_path):
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text.npz is not a readable bit weights file: not an npz archive"):
        convert.read_source("bit", tmp_path / "text.npz", "resnetv2_50x1_bit")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"single.npy is not a readable bit weights file: not an npz archive"):
        convert.read_source("bit", tmp_path / "single.npy", "resnetv2_50x1_bit")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npz is not a readable bit weights file: .*allow_pickle=False"):
        convert.read_source("bit", tmp_path / "objects.npz", "resnetv2_50x1_bit")
    with pytest.raises(ValueError, match=r"missing.npz does not exist"):
        convert.read_source("bit", tmp_path / "missing.npz", "resnetv2_50x1_bit")


def test_sources_and_architectures_that_do_not_fit():
    with pytest.raises(ValueError, match="source='bit' holds BiT ResNet v2 weights: convert them into one of"):
        convert.layer_map("bit", "resnet50_gn")
    with pytest.raises(ValueError, match="source='detectron' holds ResNet v1 weights, not resnetv2_50x1_bit's"):
        convert.layer_map("detectron", "resnetv2_50x1_bit")
    with pytest.raises(ValueError, match="BiT npz files hold BiT models, not resnetv2_50d_gn"):
        convert.layer_map("bit", "resnetv2_50d_gn")


def test_gn_parameters_saved_with_unit_axes_are_read(tmp_path):
    arrays = dict(np.load(write_bit_npz(tmp_path / "a.npz")))
    arrays["resnet/group_norm/gamma"] = arrays["resnet/group_norm/gamma"].reshape(1, 1, 1, -1)
    np.savez(tmp_path / "b.npz", **arrays)
    mapping = convert.read_source("bit", tmp_path / "b.npz", "resnetv2_50x1_bit")
    assert mapping["post_norm"][0].shape == (2048,)
    assert mapping["predictions"][0].shape == (2048, CLASSES)


@pytest.mark.slow
def test_the_command_line_converts_bit(small_npz, tmp_path):
    output = tmp_path / "out.weights.h5"
    result = subprocess.run(
        [sys.executable, "-m", "zoo.convert", "--source=bit", f"--input={small_npz}", "--arch=resnetv2_50x1_bit",
         f"--output={output}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.exists() and "Converted bit" in result.stdout


# ---------------------------------------------------------------- safetensors


def _safetensors(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_safetensors_reader(tmp_path):
    values = np.arange(6, dtype="<f4")
    path = _safetensors(tmp_path / "ok.safetensors", {
        "__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]}}, values.tobytes() + struct.pack("<q", 7))
    arrays = safetensors.load(path)
    np.testing.assert_array_equal(arrays["w"], values.reshape(2, 3))
    assert arrays["b"] == 7 and arrays["b"].dtype == np.int64
    assert convert.readers.read("timm", path).keys() == {"w", "b"}


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8,
     r"data_offsets \[0, 16\] do not hold shape \(4,\) of F32 \(16 bytes\) inside the 8-byte"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 16,
     r"data_offsets \[0, 8\] do not hold shape \(4,\)"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4,
     r"shape \[-1\] or data_offsets \[0, 4\] are not non-negative ints"),
    ({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, r"dtype 'O' is not one of"),
    ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, r"malformed record"),
])
def test_crafted_safetensors_are_refused(tmp_path, header, data, message):
    path = _safetensors(tmp_path / "crafted.safetensors", header, data)
    with pytest.raises(ValueError, match=rf"crafted.safetensors: tensor 'w' is invalid: {message}"):
        convert.readers.read("timm", path)


def test_a_truncated_safetensors_header_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"w": 1')
    with pytest.raises(ValueError, match=r"cut.safetensors: header length 10000 does not fit the file"):
        convert.readers.read("timm", path)


# ---------------------------------------------------------------- registry download


@pytest.mark.slow
def test_registry_tag_downloads_converts_and_puts_bit_preprocessing_inside(
        bit_reference, file_server, registry_with, weights_cache):
    npz, model, _ = bit_reference
    served = file_server.root / npz.name
    served.write_bytes(npz.read_bytes())
    registry_with(entry("resnetv2_50x1_bit.test_bit", format="bit", classes=CLASSES,
                        url=f"{file_server.url}/{served.name}", filename=served.name,
                        sha256=hashlib.sha256(served.read_bytes()).hexdigest(),
                        builder_args={"weight_standardization": True},
                        preprocessing=dict(color="RGB", scale=255.0, mean=[0.5] * 3, std=[0.5] * 3,
                                           inside_model=True)))
    keras_model = zoo.resnetv2_50x1_bit(weights="test_bit", classes=CLASSES, input_shape=(64, 64, 3),
                                        classifier_activation=None)
    assert keras_model.layers[1].name == "preprocessing"
    pixels = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = timm_logits(model, pixels / 127.5 - 1)
    assert np.abs(keras_model.predict(pixels, verbose=0) - expected).max() < TOLERANCE
    assert (weights_cache / "resnetv2_50x1_bit.test_bit.weights.h5").exists()
    zoo.resnetv2_50x1_bit(weights="test_bit", include_top=False)  # from the converted cache
    assert len(file_server.requests) == 1


# ---------------------------------------------------------------- BiT-HyperRule and the example


def test_bit_hyperrule():
    cifar10 = finetune.bit_hyperrule(50_000, (32, 32))
    assert cifar10.supports == (500, 3000, 6000, 9000, 10_000) and cifar10.mixup_alpha == 0.1
    assert (cifar10.precrop, cifar10.crop) == (160, 128)
    small = finetune.bit_hyperrule(19_999, (224, 224))
    assert small.steps == 500 and small.mixup_alpha == 0.0 and (small.precrop, small.crop) == (512, 480)
    assert finetune.bit_hyperrule(1_281_167, (500, 375)).supports == (500, 6000, 12_000, 18_000, 20_000)
    assert cifar10.with_steps(100).supports == (5, 30, 60, 90, 100)
    assert finetune.bit_learning_rate(512) == pytest.approx(0.003)
    assert finetune.bit_learning_rate(128) == pytest.approx(0.00075)


def test_hyperrule_schedule_is_bits_get_lr():
    def get_lr(step, supports, base_lr):  # google-research/big_transfer bit_hyperrule.py
        if step < supports[0]:
            return base_lr * step / supports[0]
        for s in supports[1:]:
            if s < step:
                base_lr /= 10
        return base_lr

    supports = (500, 3000, 6000, 9000, 10_000)
    schedule = finetune.HyperRuleSchedule(0.003, supports)
    for step in (0, 1, 250, 499, 500, 501, 3000, 3001, 6500, 9001, 9999):
        assert float(schedule(step)) == pytest.approx(get_lr(step, supports, 0.003), rel=1e-5), step
    assert finetune.HyperRuleSchedule.from_config(schedule.get_config()).supports == supports


@pytest.mark.slow
def test_example_help():
    result = subprocess.run([sys.executable, "examples/bit_finetune.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BiT-HyperRule" in result.stdout and "--per_replica_batch_size" in result.stdout


@pytest.mark.slow
def test_example_fine_tunes_from_a_bit_npz(small_npz, tmp_path):
    """A few steps of the example on random images (train.data.fake), from a
    random BiT npz, at a small crop."""
    result = subprocess.run(
        [sys.executable, "examples/bit_finetune.py", f"--weights={small_npz}", "--steps=4", "--eval_steps=2",
         "--per_replica_batch_size=4", "--precrop=40", "--crop=32"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_GN_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BiT-HyperRule for 1024 images of (32, 32): 4 steps" in result.stdout
    assert "test accuracy:" in result.stdout


@pytest.mark.slow
def test_example_on_real_cifar10(small_npz, tmp_path):
    data = os.environ.get("KERAS_GN_CIFAR10")
    if not data or not os.path.exists(data):
        pytest.skip("set KERAS_GN_CIFAR10 to cifar10-jpeg.tar.gz to run on real CIFAR-10")
    result = subprocess.run(
        [sys.executable, "examples/bit_finetune.py", f"--weights={small_npz}", f"--data_dir={data}", "--steps=3",
         "--eval_steps=2", "--per_replica_batch_size=4", "--precrop=40", "--crop=32"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BiT-HyperRule for 50000 images of (32, 32): 3 steps" in result.stdout
    assert "MixUp alpha 0.1" in result.stdout and "test accuracy:" in result.stdout
