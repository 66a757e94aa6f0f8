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
weights file cannot run code while it is read. Every tensor's offset, size
and stride are checked against its storage (as `torch.load` does) before
any data is read, and a storage must hold all the elements it declares: a
crafted file gets a `ValueError` naming it and the tensor, never memory
outside the file's data.
"""

import collections
import pickle
import zipfile
import zlib

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


class _TensorRef:
    """A tensor as the pickle describes it; `_materialize` checks and reads it."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_array(self):
        """The tensor as a NumPy array (a copy), or ValueError saying what is wrong."""
        fields = (self.offset, *self.size, *self.stride)
        if not isinstance(self.storage, np.ndarray) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in fields):
            raise ValueError("malformed tensor record")
        if len(self.size) != len(self.stride):
            raise ValueError(f"size {tuple(self.size)} and stride {tuple(self.stride)} differ in rank")
        if self.offset < 0 or any(v < 0 for v in (*self.size, *self.stride)):
            raise ValueError(f"negative offset, size or stride (offset {self.offset}, size "
                             f"{tuple(self.size)}, stride {tuple(self.stride)})")
        if 0 in self.size:
            return np.zeros(tuple(self.size), self.storage.dtype)
        end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if end > self.storage.size:
            raise ValueError(f"size {tuple(self.size)}, stride {tuple(self.stride)} and offset "
                             f"{self.offset} need {end} elements, its storage has {self.storage.size}")
        itemsize = self.storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage[self.offset:], shape=tuple(self.size), strides=tuple(s * itemsize for s in self.stride)
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _materialize(value, path, name=""):
    """`value` with every tensor read, checked against its storage."""
    if isinstance(value, _TensorRef):
        try:
            return value.to_array()
        except ValueError as error:
            raise ValueError(f"{path}: tensor {name or '(top level)'!r} is invalid: {error}.") from None
    if isinstance(value, dict):
        return type(value)((k, _materialize(v, path, f"{name}.{k}" if name else str(k))) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_materialize(v, path, f"{name}[{i}]") for i, v in enumerate(value))
    return value


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
        if not isinstance(numel, int) or numel < 0 or len(data) < numel * dtype.itemsize:
            raise ValueError(f"storage {key} declares {numel} elements but holds {len(data) // dtype.itemsize}")
        return np.frombuffer(data, dtype=dtype, count=numel).astype(storage_type.dtype)


def load(path):
    """The object saved in a `torch.save` zip file, tensors as NumPy arrays.

    Raises:
        ValueError: naming `path` (and the tensor, where one is at fault)
            and what is wrong, for anything but a well-formed file.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a readable torch.save weights file: not a zip archive (truncated, "
            "or the legacy pre-1.6 format, which is not read)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError("no single */data.pkl")
            prefix = pickles[0][: -len("/data.pkl")]
            byteorder = "little"
            if f"{prefix}/byteorder" in names:
                byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
            with archive.open(pickles[0]) as file:
                loaded = _Unpickler(file, archive, prefix, byteorder).load()
    except (ValueError, KeyError, EOFError, OSError, TypeError, AttributeError, IndexError,
            pickle.UnpicklingError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{path} is not a readable torch.save weights file: {error}") from None
    return _materialize(loaded, path)
