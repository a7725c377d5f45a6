"""Dense and non-zero parameter counts, per tensor and in total (any parameter tree)."""

import dataclasses
import math
from typing import Dict

import jax
import numpy as np
from flax import traverse_util

from palix.training import checkpoints
from palix.training import param_paths


@dataclasses.dataclass(frozen=True)
class TensorCount:
  size: int
  nonzero: int

  @property
  def sparsity(self) -> float:
    return 1.0 - self.nonzero / self.size if self.size else 0.0


def nonzero_counts(params) -> Dict[str, TensorCount]:
  """``{path: TensorCount}`` in tree order (values are fetched to the host one at a time)."""
  return {path: TensorCount(int(math.prod(np.shape(x))), int(np.count_nonzero(np.asarray(x))))
          for path, x in param_paths.flatten(params).items()}


def totals(counts: Dict[str, TensorCount]) -> TensorCount:
  return TensorCount(sum(c.size for c in counts.values()), sum(c.nonzero for c in counts.values()))


def by_top_level_module(counts: Dict[str, TensorCount]) -> Dict[str, TensorCount]:
  groups: Dict[str, list] = {}
  for path, count in counts.items():
    groups.setdefault(path.split("/")[0], []).append(count)
  return {name: TensorCount(sum(c.size for c in cs), sum(c.nonzero for c in cs))
          for name, cs in groups.items()}


def read_checkpoint_params(path: str) -> Dict[str, np.ndarray]:
  """``{path: numpy array}`` of every parameter in a checkpoint (any path
  ``palix.training.checkpoints.resolve_pytree_dir`` accepts), read on the first local device."""
  stored = checkpoints.stored_params(checkpoints.resolve_pytree_dir(path))
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  abstract = {p: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
              for p, (shape, dtype) in stored.items()}
  loaded = checkpoints.load_params(path, traverse_util.unflatten_dict(abstract, sep="/"))
  return {p: np.asarray(loaded[p]) for p in stored}

