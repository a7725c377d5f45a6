"""n:m masks on disk: pack/unpack against brute force, file round trip, and errors."""

import json

import numpy as np
import pytest

from palix.sparsity import nm_export


def _nm_weights(shape, n, m, axis, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(shape).astype(np.float32)
  moved = np.moveaxis(w, axis, -1)
  groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  drop = np.argsort(rng.random(groups.shape), axis=-1)[..., n:]
  np.put_along_axis(groups, drop, 0.0, axis=-1)
  return np.moveaxis(groups.reshape(moved.shape), -1, axis)


@pytest.mark.parametrize("shape, axis, n, m", [((8, 6), 0, 2, 4), ((3, 16), 1, 4, 8),
                                               ((4, 2, 8), 2, 1, 4)])
def test_pack_round_trip(shape, axis, n, m):
  w = _nm_weights(shape, n, m, axis)
  packed = nm_export.pack_nm(w, n, m, axis)
  assert packed.dtype == np.uint8 and packed.shape[-1] == n
  np.testing.assert_array_equal(nm_export.unpack_nm(packed, shape, m, axis), w != 0)
  # Brute force: the first group along the axis lists the non-zero positions.
  first = np.moveaxis(w, axis, -1).reshape(-1, m)[0]
  np.testing.assert_array_equal(packed.reshape(-1, n)[0], np.flatnonzero(first))


def test_files_round_trip_and_document_their_format(tmp_path):
  masks = {"a/kernel": _nm_weights((8, 4), 2, 4, 0) != 0, "b/kernel": _nm_weights((12, 4), 2, 4, 0)}
  npz, js = nm_export.export_nm_masks(masks, 2, 4, 0, str(tmp_path / "masks"))
  index = json.loads(js.read_text())
  assert index["format"] == "palix-nm-masks/1" and (index["n"], index["m"]) == (2, 4)
  assert index["tensors"]["b/kernel"] == {"key": "t1", "shape": [12, 4], "axis": 0}
  with np.load(npz, allow_pickle=False) as arrays:
    assert arrays["t1"].shape == (4, 3, 2)  # axis 0 moved last: [4, 12 / 4 groups, n]
  loaded = nm_export.load_nm_masks(str(tmp_path / "masks.npz"))
  for name, mask in masks.items():
    np.testing.assert_array_equal(loaded[name], np.asarray(mask) != 0)


def test_a_group_with_a_zero_kept_weight_is_padded():
  w = np.array([[1.0], [0.0], [0.0], [0.0]])  # 1 non-zero in a 2:4 group
  np.testing.assert_array_equal(nm_export.pack_nm(w, 2, 4, 0)[0, 0], [0, 1])


def test_not_nm_is_an_error():
  w = np.ones((4, 2))
  with pytest.raises(ValueError, match=r"w: not 2:4 sparse along axis 0: group \(0, 0\) has 4"):
    nm_export.pack_nm(w, 2, 4, 0, "w")
  with pytest.raises(ValueError, match="not divisible by m=4"):
    nm_export.pack_nm(np.ones((6, 2)), 2, 4, 0, "w")
