"""Readers of the three public GN ImageNet weight formats, each returning a
flat {name: NumPy array} in the source's own names and layouts.

- Detectron (`R-50-GN.pkl`, `R-101-GN.pkl`): a Python 2 pickle of a dict
  whose 'blobs' entry maps blob names to arrays (facebookresearch/Detectron
  `detectron/utils/io.py` `load_object`, read with encoding='latin1';
  detectron2 `detectron2/checkpoint/c2_model_loading.py`). Read with an
  unpickler that admits NumPy arrays only. `*_momentum` blobs are dropped.
- tensorpack (`ImageNet-R50-GroupNorm32-AlignPadding.npz`): a NumPy npz
  (tensorpack `tfutils/varmanip.py` `save_chkpt_vars`); a trailing `:0` on a
  name (TF variable names) is removed.
- timm (`resnet50_gn_a1h2-8fe6c4d0.pth`): a `torch.save` zip of a state
  dict (`timm/models/_hub.py`), read without torch by `torch_zip`.
"""

import pickle

import numpy as np

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


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _NUMPY_PICKLE_NAMES:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a weights file (only NumPy arrays are read)"
            )
        if module.startswith("numpy.core"):  # the name Python 2 / NumPy 1 pickles use
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def read_detectron(path):
    with open(path, "rb") as file:
        data = _NumpyOnlyUnpickler(file, encoding="latin1").load()
    blobs = data.get("blobs", data) if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise ValueError(f"{path} is not a Detectron weights pickle (no 'blobs' dict)")
    return {k: np.asarray(v) for k, v in blobs.items() if not k.endswith("_momentum")}


def read_tensorpack(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k[:-2] if k.endswith(":0") else k: npz[k] for k in npz.files}


def read_timm(path):
    state = torch_zip.load(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): np.asarray(v) for k, v in state.items()}


READERS = {"detectron": read_detectron, "tensorpack": read_tensorpack, "timm": read_timm}
