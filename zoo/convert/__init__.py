"""Converters of the public GN ImageNet weights into zoo models.

    python -m zoo.convert --source detectron --input R-50-GN.pkl \\
        --arch resnet50_gn --output resnet50_gn.weights.h5

or `zoo.convert.convert_file(source, input_path, arch, output_path)`.
`weights="imagenet"` (or a registry tag) in the builders downloads, converts
on first use and caches the result.

The pre-activation ResNets of `zoo.resnetv2` convert from BiT's npz
(`--source bit`, the BiT models) and from timm state dicts (`--source timm`,
`.pth`, `.bin` or `.safetensors`); their names are in
`zoo.convert.resnetv2`. The classifier's size is read from the file (BiT-M:
21843 ImageNet-21k classes).

The ResNet v1 sources (detectron, tensorpack, timm) are bottleneck
networks with the stride on the 3x3 convolution, projection shortcuts in
the first block of every stage, symmetric padding, GN with 32 groups and
epsilon 1e-5, no convolution biases, and a 1000-class linear classifier:
the architecture of `zoo.resnet50_gn` / `zoo.resnet101_gn`. Their names
and layouts:

| | stem / block conv k / shortcut | GN scale, offset | classifier | layouts |
| --- | --- | --- | --- | --- |
| detectron | `conv1_w`, `res{S}_{i}_branch2{a,b,c}_w`, `res{S}_0_branch1_w` | `<conv>_gn_s`, `<conv>_gn_b` | `pred_w` (1000, 2048), `pred_b` | conv OIHW |
| tensorpack | `conv0/W`, `group{s}/block{i}/conv{1,2,3}/W`, `.../convshortcut/W` | `<conv>/gn/gamma`, `/gn/beta` | `linear/W` (2048, 1000), `linear/b` | conv HWIO |
| timm | `conv1.weight`, `layer{s}.{i}.conv{1,2,3}.weight`, `layer{s}.0.downsample.0.weight` | `bn1`, `layer{s}.{i}.bn{k}`, `downsample.1` `.weight`, `.bias` | `fc.weight` (1000, 2048), `fc.bias` | conv OIHW |

Sources: Detectron `detectron/modeling/ResNet.py` (`basic_gn_stem`,
`bottleneck_gn_transformation`, `basic_gn_shortcut`), `detector.py`
(`ConvGN`, `no_conv_bias=1`), detectron2 `checkpoint/c2_model_loading.py`
(`pred_w`), `configs/04_2018_gn_baselines/*.yaml` (`STRIDE_1X1: False`);
GroupNorm-reproduce `ImageNet-ResNet-TensorFlow/resnet_model.py` and its
`log.log` variable table; timm `timm/models/resnet.py` (`Bottleneck`,
`downsample_conv`, `resnet50_gn`), `timm/layers/norm.py` (`GroupNorm`,
eps 1e-5). Stages: Detectron res2..res5, tensorpack group0..group3, timm
layer1..layer4; blocks count from 0.
"""

import dataclasses
import os
import pathlib

import numpy as np

from zoo.convert import readers
from zoo.convert import resnetv2
from zoo.convert.readers import READERS

SOURCES = tuple(READERS)


@dataclasses.dataclass(frozen=True)
class _Naming:
    stem: tuple  # (conv, gamma, beta)
    block: callable  # (stage, block, k) -> (conv, gamma, beta); k=0 is the shortcut
    classifier: tuple  # (kernel, bias)
    conv_oihw: bool  # else HWIO
    classifier_out_in: bool  # else (in, out)


def _detectron_block(stage, block, k):
    conv = f"res{stage + 2}_{block}_branch" + ("1" if k == 0 else "2" + "abc"[k - 1])
    return f"{conv}_w", f"{conv}_gn_s", f"{conv}_gn_b"


def _tensorpack_block(stage, block, k):
    conv = f"group{stage}/block{block}/" + ("convshortcut" if k == 0 else f"conv{k}")
    return f"{conv}/W", f"{conv}/gn/gamma", f"{conv}/gn/beta"


def _timm_block(stage, block, k):
    prefix = f"layer{stage + 1}.{block}."
    conv, norm = ("downsample.0", "downsample.1") if k == 0 else (f"conv{k}", f"bn{k}")
    return f"{prefix}{conv}.weight", f"{prefix}{norm}.weight", f"{prefix}{norm}.bias"


NAMINGS = {
    "detectron": _Naming(("conv1_w", "conv1_gn_s", "conv1_gn_b"), _detectron_block,
                         ("pred_w", "pred_b"), conv_oihw=True, classifier_out_in=True),
    "tensorpack": _Naming(("conv0/W", "conv0/gn/gamma", "conv0/gn/beta"), _tensorpack_block,
                          ("linear/W", "linear/b"), conv_oihw=False, classifier_out_in=False),
    "timm": _Naming(("conv1.weight", "bn1.weight", "bn1.bias"), _timm_block,
                    ("fc.weight", "fc.bias"), conv_oihw=True, classifier_out_in=True),
}


def _check_source(source):
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {SOURCES}.")


def _is_resnetv2(arch):
    from zoo.resnetv2 import ARCHS

    return arch in ARCHS


def _stage_blocks(arch):
    from zoo.resnet import ARCHS
    from zoo.resnetv2 import ARCHS as V2_ARCHS

    config = ARCHS.get(arch)
    if config is None or config.get("bottleneck", True) is False or config.get("stem") == "cifar":
        convertible = sorted(a for a, c in ARCHS.items() if c.get("bottleneck", True) and "stem" not in c)
        raise ValueError(f"arch={arch!r} has no public GN weights to convert; "
                         f"converters support {convertible + sorted(V2_ARCHS)}.")
    return config["stage_blocks"]


def layer_map(source, arch):
    """[(keras layer name, [source name per Keras variable])] for `arch`."""
    _check_source(source)
    if _is_resnetv2(arch):
        return resnetv2.layer_map(source, arch)
    if source not in NAMINGS:
        raise ValueError(f"source={source!r} holds BiT ResNet v2 weights: convert them into one of "
                         f"the resnetv2_*_bit models, not {arch}.")
    naming = NAMINGS[source]
    layers = [("conv1_conv", [naming.stem[0]]), ("conv1_norm", list(naming.stem[1:]))]
    for stage, blocks in enumerate(_stage_blocks(arch)):
        for block in range(blocks):
            for k in ((0, 1, 2, 3) if block == 0 else (1, 2, 3)):
                conv, gamma, beta = naming.block(stage, block, k)
                keras_name = f"conv{stage + 2}_block{block + 1}_{k}"
                layers += [(f"{keras_name}_conv", [conv]), (f"{keras_name}_norm", [gamma, beta])]
    layers.append(("predictions", list(naming.classifier)))
    return layers


def _to_keras(source, name, array, layer_name, arch, shape):
    """A source array in the layout of the Keras variable it becomes."""
    if _is_resnetv2(arch):
        return resnetv2.to_keras(source, array, shape)
    naming = NAMINGS[source]
    if array.ndim == 4 and naming.conv_oihw:
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if layer_name == "predictions" and array.ndim == 2 and naming.classifier_out_in:
        return array.T  # (out, in) -> (in, out)
    return array


def _full_model(arch, classes=1000):
    import zoo

    return zoo.get_model(arch)(weights=None, include_top=True, classes=classes)


def _classes(source, arch, arrays):
    """The classifier size of the weights (1000 where the file does not say)."""
    if _is_resnetv2(arch):
        return resnetv2.classes(source, arrays) or 1000
    return 1000


def read_source(source, path, arch, model=None):
    """Reads a source file and checks it against `arch`.

    Returns:
        {keras layer name: [arrays in Keras layout]} for every layer.

    Raises:
        ValueError: naming the missing or mis-shaped arrays.
    """
    return _read_checked(source, path, arch, model)[0]


def _read_checked(source, path, arch, model=None):
    """`(read_source's mapping, the full model it was checked against)`."""
    _check_source(source)
    layers = layer_map(source, arch)  # an unsupported source/arch pair fails before reading
    arrays = readers.read(source, path)
    model = model or _full_model(arch, _classes(source, arch, arrays))
    mapping, missing, wrong = {}, [], []
    for layer_name, names in layers:
        variables = model.get_layer(layer_name).weights
        converted = []
        for name, variable in zip(names, variables, strict=True):
            if name not in arrays:
                missing.append(name)
                continue
            value = _to_keras(source, name, np.asarray(arrays[name], np.float32), layer_name, arch,
                              tuple(variable.shape))
            if tuple(value.shape) != tuple(variable.shape):
                wrong.append(f"{name}: {tuple(arrays[name].shape)}")
            converted.append(value)
        mapping[layer_name] = converted
    if missing or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing arrays (e.g. {missing[:4]})")
        if wrong:
            problems.append(f"{len(wrong)} arrays of unexpected shape (e.g. {wrong[:4]})")
        raise ValueError(
            f"{path} is not a {source} {arch} weights file: " + "; ".join(problems) + "."
        )
    return mapping, model


def convert_file(source, input_path, arch, output_path):
    """Converts a source weights file into a `.weights.h5` of `zoo.<arch>`
    (with its top: 1000 classes, or as many as a ResNet v2 file holds) and
    returns `output_path`."""
    mapping, model = _read_checked(source, input_path, arch)
    for layer_name, values in mapping.items():
        for variable, value in zip(model.get_layer(layer_name).weights, values):
            variable.assign(value)
    # Written beside the target and renamed into place: a conversion killed
    # halfway never leaves a file at `output_path` that a later load trusts.
    output_path = pathlib.Path(output_path)
    partial = output_path.with_name(f".{output_path.name}.partial-{os.getpid()}.weights.h5")
    try:
        model.save_weights(str(partial))
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)
    return output_path
