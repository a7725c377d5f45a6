"""A checkpoint and the task split it runs over: what ``palix infer``'s jobs share.

:class:`CheckpointSplit` (bound by ``gin/runs/infer.gin`` and ``gin/runs/eval_teacher_forced.gin``)
names the model, its checkpoint (a training run or a params-only checkpoint, see
``palix.training.checkpoints.load_params``) and one finite, unshuffled pass over a task or
mixture split. :meth:`CheckpointSplit.open` loads the parameters straight into their sharded
layout and returns the batches, each filled up to the full batch size with all-zero rows and
paired with the indices of its real rows.
"""

import dataclasses
import itertools
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import gin
import jax
import numpy as np

from palix import partitioning
from palix.training import checkpoints as checkpoints_lib

RowsBatch = Tuple[Dict[str, np.ndarray], np.ndarray]  # (batch, indices of its real rows)


def real_rows(batch) -> np.ndarray:
  """Indices of real examples: padding rows (from ``repeat=False``) have no image and no prompt."""
  padding = np.ones(len(next(iter(batch.values()))), bool)
  for key in ("image_mask", "encoder_input_tokens"):
    if key in batch:
      padding &= ~np.asarray(batch[key]).reshape(len(padding), -1).any(axis=1)
  return np.flatnonzero(~padding)


def full_batches(batches: Iterator, local_batch_size: int) -> Iterator[RowsBatch]:
  """``(batch, real row indices)``; a short batch is filled up with all-zero (padding) rows."""
  for batch in batches:
    rows = len(next(iter(batch.values())))
    if rows < local_batch_size:
      batch = {k: np.concatenate([v, np.zeros((local_batch_size - rows,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, real_rows(batch)


def local_rows(array: jax.Array, layout: partitioning.DataLayout) -> np.ndarray:
  """This process's rows (those it loaded) of a global ``[batch, ...]`` array, replicated or
  sharded along the batch: read from the shards this process holds, without a transfer."""
  start, count = layout.shard_index * layout.local_batch_size, layout.local_batch_size
  if not isinstance(array, jax.Array):  # a host array holds the whole global batch
    return np.asarray(array)[start:start + count]
  out = np.zeros((count,) + tuple(array.shape[1:]), array.dtype)
  for shard in array.addressable_shards:
    rows = shard.index[0] if shard.index else slice(None)
    low = rows.start or 0
    high = array.shape[0] if rows.stop is None else rows.stop
    first, last = max(low, start), min(high, start + count)
    if first < last:
      out[first - start:last - start] = np.asarray(shard.data)[first - low:last - low]
  return out


@dataclasses.dataclass
class OpenSplit:
  """A loaded checkpoint and its batches (see :meth:`CheckpointSplit.open`)."""
  partitioner: partitioning.Partitioner
  layout: partitioning.DataLayout
  params: Any
  batches: Iterator[RowsBatch]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointSplit:
  """The model, its checkpoint and one pass over ``split`` of ``mixture_or_task_name``.

  Attributes:
    model: a ``palix.models.base.BaseModel``.
    checkpoint_path: a training run's folder, its ``checkpoints`` folder, one step, or a
      params-only checkpoint.
    mixture_or_task_name, task_feature_lengths, split: the data (through ``get_batches_fn``).
    get_batches_fn: the batch source (``palix.training.data``).
    batch_size: the global batch size (all processes).
    partitioner: mesh and rules (default: ``Partitioner()``, data parallel).
  """
  model: Any = gin.REQUIRED
  checkpoint_path: str = gin.REQUIRED
  mixture_or_task_name: str = gin.REQUIRED
  task_feature_lengths: Mapping[str, int] = gin.REQUIRED
  get_batches_fn: Callable = gin.REQUIRED
  batch_size: int = 32
  split: str = "validation"
  partitioner: Optional[partitioning.Partitioner] = None

  @property
  def name(self) -> str:
    return f"{self.mixture_or_task_name}-{self.split}"

  def open(self) -> OpenSplit:
    """Loads the parameters (sized by the first batch) and starts the pass."""
    self.model.check_feature_lengths(self.task_feature_lengths)
    partitioner = self.partitioner or partitioning.Partitioner()
    layout = partitioner.data_layout(self.batch_size)
    batches = self.get_batches_fn(
        self.mixture_or_task_name, split=self.split, batch_size=layout.local_batch_size,
        feature_lengths=dict(self.task_feature_lengths), seed=0, shuffle=False, repeat=False,
        start_step=0, shard_index=layout.shard_index, num_shards=layout.num_shards)
    batches = full_batches(batches, layout.local_batch_size)
    first = next(batches, None)
    if first is None:
      raise ValueError(f"{self.mixture_or_task_name!r} split {self.split!r} yielded no batch")
    shapes = {k: (self.batch_size,) + v.shape[1:] for k, v in first[0].items()}
    types = {k: v.dtype for k, v in first[0].items()}
    params = checkpoints_lib.load_model_params(self.model, self.checkpoint_path, partitioner,
                                               shapes, types)
    return OpenSplit(partitioner, layout, params, itertools.chain([first], batches))
