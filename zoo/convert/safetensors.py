"""Reads `.safetensors` files (Hugging Face hub weights, timm's
`model.safetensors`) without the `safetensors` package.

Format (huggingface/safetensors `docs/`, "Format"): an unsigned 64-bit
little-endian header length `N`, then `N` bytes of UTF-8 JSON mapping each
tensor name to `{"dtype": "F32", "shape": [...], "data_offsets": [begin,
end]}` (plus an optional `"__metadata__"` dict of strings), then the data
buffer; offsets are in bytes from the start of that buffer, values are
little-endian and C-ordered.

No code runs while a file is read (JSON only), and every record is checked
before its bytes are read: a known dtype, a shape of non-negative ints,
offsets inside the data buffer whose length is the shape's exact byte size.
A crafted or truncated file gets a `ValueError` naming it and the tensor.
"""

import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors package's limit


def is_safetensors(path):
    """Whether `path` starts like a safetensors file (a header length, then `{`)."""
    with open(path, "rb") as file:
        start = file.read(9)
    return len(start) == 9 and start[8:9] == b"{" and struct.unpack("<Q", start[:8])[0] >= 2


def _header(file, path, size):
    (length,) = struct.unpack("<Q", file.read(8))
    if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
        raise ValueError(f"{path}: header length {length} does not fit the file ({size} bytes)")
    try:
        header = json.loads(file.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: the header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + length


def _checked(name, record, data_bytes):
    """`(dtype, shape, begin, end)` of a tensor record, or ValueError."""
    if not isinstance(record, dict) or set(record) != {"dtype", "shape", "data_offsets"}:
        raise ValueError("malformed record")
    dtype, shape, offsets = record["dtype"], record["shape"], record["data_offsets"]
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    ints = lambda values: isinstance(values, list) and all(  # noqa: E731
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
    if not ints(shape) or not ints(offsets) or len(offsets) != 2:
        raise ValueError(f"shape {shape!r} or data_offsets {offsets!r} are not non-negative ints")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
    if not begin <= end <= data_bytes or end - begin != nbytes:
        raise ValueError(f"data_offsets {offsets} do not hold shape {tuple(shape)} of {dtype} "
                         f"({nbytes} bytes) inside the {data_bytes}-byte data buffer")
    return np.dtype(_DTYPES[dtype]).newbyteorder("<"), tuple(shape), begin, end


def load(path):
    """{name: NumPy array} of a safetensors file (copies, native byte order).

    Raises:
        ValueError: naming `path` (and the tensor at fault) and what is
            wrong, for anything but a well-formed file.
    """
    size = os.path.getsize(path)
    if size < 10:
        raise ValueError(f"{path}: {size} bytes, too short for a safetensors file")
    arrays = {}
    with open(path, "rb") as file:
        header, data_start = _header(file, path, size)
        for name, record in header.items():
            try:
                dtype, shape, begin, end = _checked(name, record, size - data_start)
            except ValueError as error:
                raise ValueError(f"{path}: tensor {name!r} is invalid: {error}.") from None
            file.seek(data_start + begin)
            data = file.read(end - begin)
            arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return arrays
