"""Reads PyTorch `torch.save` files (zip archives) without torch.

Format (pytorch/pytorch `torch/serialization.py`, `_save` / `_load`): a zip
archive whose entries share one top-level folder: `<prefix>/data.pkl` (the
pickled object, protocol 2), `<prefix>/data/<key>` (raw storages, one per
key), `<prefix>/byteorder` (`little` or `big`; little if absent). Storages
appear in the pickle as persistent ids `('storage', <torch.XStorage>, key,
location, numel)`, tensors as calls to `torch._utils._rebuild_tensor_v2(
storage, offset, size, stride, requires_grad, backward_hooks, ...)` with
offset and strides in elements (`torch/_utils.py`).

The unpickler admits only those names and `collections.OrderedDict`, so a
weights file cannot run code while it is read.
"""

import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, byteorder):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(
            f"{module}.{name} is not allowed in a weights file (only tensors and dicts are read)"
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        data = self._archive.read(f"{self._prefix}/data/{key}")
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        return np.frombuffer(data, dtype=dtype, count=numel).astype(storage_type.dtype)


def load(path):
    """The object saved in a `torch.save` zip file, tensors as NumPy arrays."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a torch.save zip archive (the legacy pre-1.6 format is not read)"
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} is not a torch.save zip archive (no single */data.pkl)")
        prefix = pickles[0][: -len("/data.pkl")]
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
        with archive.open(pickles[0]) as file:
            return _Unpickler(file, archive, prefix, byteorder).load()
