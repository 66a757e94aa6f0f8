"""Readers of the public GN ImageNet weight formats, each returning a flat
{name: NumPy array} in the source's own names and layouts.

- Detectron (`R-50-GN.pkl`, `R-101-GN.pkl`): a Python 2 pickle of a dict
  whose 'blobs' entry maps blob names to arrays (facebookresearch/Detectron
  `detectron/utils/io.py` `load_object`, read with encoding='latin1';
  detectron2 `detectron2/checkpoint/c2_model_loading.py`). Read with an
  unpickler that admits NumPy arrays only. `*_momentum` blobs are dropped.
- tensorpack (`ImageNet-R50-GroupNorm32-AlignPadding.npz`): a NumPy npz
  (tensorpack `tfutils/varmanip.py` `save_chkpt_vars`); a trailing `:0` on a
  name (TF variable names) is removed.
- timm (`resnet50_gn_a1h2-8fe6c4d0.pth`, the hub's `pytorch_model.bin`):
  a `torch.save` zip of a state dict (`timm/models/_hub.py`), read without
  torch by `torch_zip`; or the hub's `model.safetensors`, read without the
  safetensors package by `zoo.convert.safetensors` (told apart by their
  first bytes).
- bit (`BiT-M-R50x1.npz`, google-research/big_transfer): a NumPy npz of the
  TF variables (`resnet/root_block/standardized_conv2d/kernel`, ...), read
  with `allow_pickle=False`.

`read(source, path)` wraps them: a missing, truncated or corrupt file gets a
`ValueError` that names it and says what is wrong. Only well-formed numeric
arrays with all their data are accepted: a pickled array whose data never
arrives (NumPy would hand out uninitialised memory) or that holds Python
objects is refused.
"""

import os
import pickle
import zipfile
import zlib

import numpy as np

from zoo.convert import safetensors
from zoo.convert import torch_zip

_NUMPY_PICKLE_NAMES = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _PickledArray(np.ndarray):
    """An array being unpickled: NumPy's `_reconstruct` allocates it
    uninitialised, and only its `__setstate__` fills it with the file's data."""

    def __setstate__(self, state):
        super().__setstate__(state)
        self.filled = True


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"only plain NumPy arrays are read, not {subtype!r}")
    return _PickledArray.__new__(_PickledArray, shape, dtype)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _NUMPY_PICKLE_NAMES:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a weights file (only NumPy arrays are read)"
            )
        if name == "_reconstruct":
            return _reconstruct
        if module.startswith("numpy.core"):  # the name Python 2 / NumPy 1 pickles use
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def _checked_array(name, value):
    if isinstance(value, _PickledArray):
        if not getattr(value, "filled", False):
            raise ValueError(f"array {name!r} has no data in the file")
        value = value.view(np.ndarray)
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"array {name!r} holds {array.dtype} values, not numbers")
    return np.array(array)  # a copy: nothing of the unpickled objects is kept


def read_detectron(path):
    with open(path, "rb") as file:
        data = _NumpyOnlyUnpickler(file, encoding="latin1").load()
    blobs = data.get("blobs", data) if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise ValueError("not a Detectron weights pickle (no 'blobs' dict)")
    return {k: _checked_array(k, v) for k, v in blobs.items() if not k.endswith("_momentum")}


def read_tensorpack(path):
    with np.load(path, allow_pickle=False) as npz:
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an npz archive (a single .npy array)")
        return {k[:-2] if k.endswith(":0") else k: npz[k] for k in npz.files}


def read_bit(path):
    if not zipfile.is_zipfile(path):
        raise ValueError("not an npz archive (a zip of .npy files); truncated, or another format")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def read_timm(path):
    if safetensors.is_safetensors(path):
        return safetensors.load(path)
    state = torch_zip.load(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError("it does not hold a state dict")
    return {k.removeprefix("module."): np.asarray(v) for k, v in state.items()}


READERS = {"detectron": read_detectron, "tensorpack": read_tensorpack, "timm": read_timm, "bit": read_bit}


def read(source, path):
    """{name: array} of a `source` weights file.

    Raises:
        ValueError: naming `path` and what is wrong with it, for a missing,
            truncated, corrupt or crafted file.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist (or is not a file).")
    try:
        return READERS[source](path)
    except (ValueError, KeyError, EOFError, OSError, TypeError, AttributeError, IndexError,
            pickle.UnpicklingError, zipfile.BadZipFile, zlib.error) as error:
        message = str(error)
        if message.startswith(str(path)):  # torch_zip and safetensors name the file themselves
            raise ValueError(message) from None
        raise ValueError(f"{path} is not a readable {source} weights file: {message or type(error).__name__}.") from None
