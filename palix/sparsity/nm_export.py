"""n:m masks on disk: an ``.npz`` of packed kept-positions plus a JSON index (no pickle).

For a tensor of shape ``shape`` with an ``n:m`` pattern along ``axis``, the npz entry
``<key>`` is a ``uint8`` array of shape ``moved_shape[:-1] + (moved_shape[-1] // m, n)``, where
``moved_shape`` is ``shape`` with ``axis`` moved last: for every group of ``m`` consecutive
entries along ``axis``, the ascending positions (``0..m-1``) of its ``n`` kept entries. That is the
metadata sparse tensor cores take alongside the ``n`` values (2 bits per value for 2:4).

The JSON index (``<name>.json`` next to ``<name>.npz``)::

  {"format": "palix-nm-masks/1", "n": 2, "m": 4,
   "tensors": {"vit/.../kernel": {"key": "t0", "shape": [64, 128], "axis": 0}, ...}}

A group with fewer than ``n`` non-zeros (a kept weight that happens to be exactly 0) is padded
with its lowest zero positions; a group with more than ``n`` is an error naming the tensor.
"""

import json
import pathlib
from typing import Dict, Tuple

import numpy as np

FORMAT = "palix-nm-masks/1"


def pack_nm(mask: np.ndarray, n: int, m: int, axis: int, path: str = "tensor") -> np.ndarray:
  """Bool mask (or non-zero pattern) -> ``uint8`` kept positions per group (see module doc)."""
  mask = np.asarray(mask) != 0
  moved = np.moveaxis(mask, axis, -1)
  if moved.shape[-1] % m:
    raise ValueError(f"{path}: axis {axis} of shape {mask.shape} (size {moved.shape[-1]}) is not "
                     f"divisible by m={m}")
  groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  kept = groups.sum(-1)
  if np.any(kept > n):
    where = np.unravel_index(int(np.argmax(kept > n)), kept.shape)
    raise ValueError(f"{path}: not {n}:{m} sparse along axis {axis}: group {tuple(map(int, where))} "
                     f"has {int(kept[where])} non-zeros")
  # Kept positions first (ascending), then zero positions (ascending): take the first n.
  order = np.argsort(~groups, axis=-1, kind="stable")[..., :n]
  return np.sort(order, axis=-1).astype(np.uint8)


def unpack_nm(packed: np.ndarray, shape: Tuple[int, ...], m: int, axis: int) -> np.ndarray:
  """Inverse of ``pack_nm``: the bool mask of ``shape``."""
  moved_shape = tuple(np.moveaxis(np.empty(shape, np.bool_), axis, -1).shape)
  groups = np.zeros(moved_shape[:-1] + (moved_shape[-1] // m, m), np.bool_)
  np.put_along_axis(groups, packed.astype(np.int64), True, axis=-1)
  return np.moveaxis(groups.reshape(moved_shape), -1, axis)


def export_nm_masks(masks: Dict[str, np.ndarray], n: int, m: int, axis: int,
                    path: str) -> Tuple[pathlib.Path, pathlib.Path]:
  """Writes ``PATH.npz`` and ``PATH.json`` for ``{param path: mask or weights}``."""
  base = pathlib.Path(path)
  base = base.with_suffix("") if base.suffix in (".npz", ".json") else base
  base.parent.mkdir(parents=True, exist_ok=True)
  arrays, index = {}, {}
  for i, (name, mask) in enumerate(masks.items()):
    key = f"t{i}"
    arrays[key] = pack_nm(mask, n, m, axis, name)
    index[name] = {"key": key, "shape": list(np.shape(mask)), "axis": axis}
  npz, js = base.with_suffix(".npz"), base.with_suffix(".json")
  np.savez_compressed(npz, **arrays)
  js.write_text(json.dumps({"format": FORMAT, "n": n, "m": m, "tensors": index}, indent=1) + "\n")
  return npz, js


def load_nm_masks(path: str) -> Dict[str, np.ndarray]:
  """Reads masks written by ``export_nm_masks`` back as ``{param path: bool mask}``."""
  base = pathlib.Path(path)
  base = base.with_suffix("") if base.suffix in (".npz", ".json") else base
  index = json.loads(base.with_suffix(".json").read_text())
  if index.get("format") != FORMAT:
    raise ValueError(f"{base.with_suffix('.json')}: format {index.get('format')!r}, expected "
                     f"{FORMAT!r}")
  with np.load(base.with_suffix(".npz"), allow_pickle=False) as arrays:
    return {name: unpack_nm(arrays[t["key"]], tuple(t["shape"]), index["m"], t["axis"])
            for name, t in index["tensors"].items()}
