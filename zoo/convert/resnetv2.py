"""Names and layouts of the pre-activation ResNet weights (`zoo.resnetv2`).

| | stem conv | unit k=1,2,3 conv / norm before it | shortcut | final norm | classifier | conv layout |
| --- | --- | --- | --- | --- | --- | --- |
| bit | `resnet/root_block/standardized_conv2d/kernel` | `resnet/block{s}/unit{i:02d}/{a,b,c}/standardized_conv2d/kernel`, `.../{a,b,c}/group_norm/gamma`, `/beta` | `.../a/proj/standardized_conv2d/kernel` | `resnet/group_norm/gamma`, `/beta` | `resnet/head/conv2d/kernel` (1, 1, C, K), `/bias` | HWIO |
| timm | `stem.conv.weight` (deep: `stem.conv{1,2,3}.weight`, `stem.norm{1,2}`) | `stages.{s}.blocks.{i}.conv{k}.weight`, `.norm{k}.weight`, `.bias` | `stages.{s}.blocks.0.downsample.conv.weight` | `norm.weight`, `.bias` | `head.fc.weight` (K, C, 1, 1), `.bias` | OIHW |

BiT counts stages (`block1`..`block4`) and units (`unit01`..) from 1, timm
from 0. In both, the norm of sub-unit a/`norm1` pre-activates the unit's
input (the Keras `_preact_norm`), b/`norm2` follows the 1x1 conv
(`_1_norm`) and c/`norm3` the 3x3 conv (`_2_norm`). Sources: timm
`timm/models/resnetv2.py` (`_load_weights`, which reads BiT's npz, and the
module names), BiT `bit_tf2/models.py` (the variable scopes).
"""

import numpy as np

SOURCES = ("bit", "timm")


def _bit(stage, unit, part):
    return f"resnet/block{stage + 1}/unit{unit + 1:02d}/{part}"


def layer_map(source, arch):
    """[(keras layer name, [source name per Keras variable])] for `arch`."""
    from zoo.resnetv2 import ARCHS

    config = ARCHS[arch]
    if source not in SOURCES:
        raise ValueError(f"source={source!r} holds ResNet v1 weights, not {arch}'s; "
                         f"{arch} converts from {SOURCES}.")
    if source == "bit" and config["stem"] != "bit":
        raise ValueError(f"BiT npz files hold BiT models, not {arch}; convert it from timm weights.")
    layers = []
    if source == "bit":
        layers.append(("conv1_conv", ["resnet/root_block/standardized_conv2d/kernel"]))
    elif config["stem"] == "deep":
        for i in (1, 2, 3):
            layers.append((f"conv1_{i}_conv", [f"stem.conv{i}.weight"]))
            if i < 3:
                layers.append((f"conv1_{i}_norm", [f"stem.norm{i}.weight", f"stem.norm{i}.bias"]))
    else:
        layers.append(("conv1_conv", ["stem.conv.weight"]))
    for stage, units in enumerate(config["stage_blocks"]):
        for unit in range(units):
            keras_name = f"conv{stage + 2}_block{unit + 1}"
            if source == "bit":
                norms = [f"{_bit(stage, unit, p)}/group_norm/{v}" for p in "abc" for v in ("gamma", "beta")]
                convs = [f"{_bit(stage, unit, p)}/standardized_conv2d/kernel" for p in "abc"]
                shortcut = f"{_bit(stage, unit, 'a')}/proj/standardized_conv2d/kernel"
            else:
                prefix = f"stages.{stage}.blocks.{unit}."
                norms = [f"{prefix}norm{k}.{v}" for k in (1, 2, 3) for v in ("weight", "bias")]
                convs = [f"{prefix}conv{k}.weight" for k in (1, 2, 3)]
                shortcut = f"{prefix}downsample.conv.weight"
            if unit == 0:
                layers.append((f"{keras_name}_0_conv", [shortcut]))
            for k, norm_name in enumerate(("preact", "1", "2")):
                layers.append((f"{keras_name}_{norm_name}_norm", norms[2 * k:2 * k + 2]))
                layers.append((f"{keras_name}_{k + 1}_conv", [convs[k]]))
    if source == "bit":
        layers += [("post_norm", ["resnet/group_norm/gamma", "resnet/group_norm/beta"]),
                   ("predictions", ["resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"])]
    else:
        layers += [("post_norm", ["norm.weight", "norm.bias"]),
                   ("predictions", ["head.fc.weight", "head.fc.bias"])]
    return layers


def to_keras(source, array, shape):
    """A source array in the layout of a Keras variable of `shape`, or the
    array unchanged where no layout fits (the caller reports the shape)."""
    if array.ndim == 4 and source == "timm":
        array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if len(shape) == 2 and array.ndim == 4 and array.shape[:2] == (1, 1):
        return array.reshape(array.shape[2:])  # a 1x1 conv of pooled features -> Dense (in, out)
    if len(shape) == 1 and array.ndim > 1 and array.shape[:-1] == (1,) * (array.ndim - 1):
        return array.reshape(-1)  # GN gamma/beta saved as (1, 1, 1, C)
    return array


def classes(source, arrays):
    """The number of classes of the classifier in `arrays`, or None."""
    bias = arrays.get("resnet/head/conv2d/bias" if source == "bit" else "head.fc.bias")
    return int(np.shape(bias)[-1]) if bias is not None and np.ndim(bias) >= 1 else None
