"""Read ``.safetensors`` files into numpy arrays, bfloat16 included, without torch.

The format (https://huggingface.co/docs/safetensors) is an 8-byte little-endian header length, a
JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`` and the
raw little-endian tensor bytes. It is read here rather than through ``safetensors.numpy`` because
that reader rejects bfloat16 (numpy has no such dtype; ``ml_dtypes``, which JAX ships, does).
Nothing is unpickled, so a checkpoint cannot run code.
"""

import json
import pathlib
from typing import Dict, Union

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_MAX_HEADER_BYTES = 100 * 2**20


def read_safetensors(path: Union[str, pathlib.Path]) -> Dict[str, np.ndarray]:
  """All tensors of one ``.safetensors`` file as numpy arrays, read tensor by tensor."""
  path = pathlib.Path(path)
  size = path.stat().st_size
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise ValueError(f"{path}: too short to be a safetensors file ({size} bytes)")
    header_len = int.from_bytes(prefix, "little")
    if header_len > min(_MAX_HEADER_BYTES, size - 8):
      raise ValueError(f"{path}: header length {header_len} is implausible for a {size}-byte "
                       "file; is this really a safetensors file?")
    try:
      header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    body_start, body_len = 8 + header_len, size - 8 - header_len
    tensors = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      dtype = _DTYPES.get(info.get("dtype"))
      if dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; supported: "
                         f"{', '.join(_DTYPES)}")
      shape = tuple(info["shape"])
      begin, end = info["data_offsets"]
      count = int(np.prod(shape, dtype=np.int64))
      if not 0 <= begin <= end <= body_len or end - begin != count * dtype.itemsize:
        raise ValueError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has data "
                         f"offsets [{begin}, {end}] that do not match its size or the file")
      f.seek(body_start + begin)
      tensors[name] = np.fromfile(f, dtype=dtype, count=count).reshape(shape)
  return tensors
