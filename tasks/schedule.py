"""Which example fills each position of the batch stream: a pure function of the position.

Position ``p`` counts examples of the global stream (batch ``j``, row ``i`` of shard ``s`` of
``S``, local batch ``B``: ``p = (j * S + s) * B + i``). Because the mapping needs no history,
a run restarted at step ``k`` recomputes exactly the examples it would have seen, at no cost.
(With ``batch_parts`` every batch holds a fixed number of rows of each task, and a task's examples
are located from its own served count with :meth:`Schedule.example_at`.)

Repeating streams (training):

* positions come in blocks of ``block_size``; task ``t`` owns ``quota[t]`` slots of every block
  (rates apportioned by largest remainder, at least one slot per task), so rates hold exactly
  per block; with ``shuffle`` the slots of each block are permuted (seeded by the block number);
* slot ``u`` of task ``t`` in block ``b`` is the task's local position
  ``n = b * quota[t] + (u - first slot of t)``; local positions run through epochs of the
  task's split, each a fresh permutation (seeded by task, split and epoch) when shuffling. Every
  example appears once per epoch of local positions; in stream order an epoch boundary of a
  mixed task is blurred over at most one block. A single task's stream is exactly its epochs.

Finite streams (``repeat=False``, evaluation): the tasks' examples are concatenated into one
pool and each is visited exactly once (in a seeded permutation of the pool when shuffling);
positions past the pool are padding (task id ``len(tasks)``). Rates do not apply.

All permutations are ``tf.random.experimental.index_shuffle`` (stateless, O(1) per lookup).
"""

from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from palix.tasks.sources import base

DEFAULT_BLOCK_SIZE = 1000


def block_quotas(rates: Sequence[float], block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
  """Slots per block for each rate: proportional, integer, each >= 1, summing to block_size."""
  rates = np.asarray(rates, np.float64)
  if rates.ndim != 1 or not len(rates) or np.any(~np.isfinite(rates)) or np.any(rates <= 0):
    raise ValueError(f"mixing rates must be positive finite numbers; got {rates.tolist()}")
  if len(rates) > block_size:
    raise ValueError(f"{len(rates)} tasks do not fit a block of {block_size} examples")
  ideal = rates / rates.sum() * block_size
  quotas = np.maximum(np.floor(ideal).astype(np.int64), 1)
  remainder = ideal - np.floor(ideal)
  while quotas.sum() < block_size:  # largest remainder first; ties by task order
    best = int(np.argmax(remainder))
    quotas[best] += 1
    remainder[best] = -1.0
  while quotas.sum() > block_size:  # only when the at-least-one rule overshot
    quotas[int(np.argmax(quotas))] -= 1
  return quotas


def _seed(seed: int, purpose: str, counter) -> tf.Tensor:
  return base.example_seed(seed, purpose, counter)


class Schedule:
  """Maps global positions to ``(task id, example index, augmentation seed)``.

  Args:
    streams: ``(stream name, number of examples)`` per task; the name (task and split) seeds that
      task's permutations, so adding a task to a mixture does not reorder the others' epochs.
    rates: mixing rate per task (ignored when ``repeat`` is False).
  """

  def __init__(self, streams: Sequence[Tuple[str, int]], rates: Sequence[float], *, seed: int,
               shuffle: bool, repeat: bool, block_size: int = DEFAULT_BLOCK_SIZE):
    self.names = [name for name, _ in streams]
    self.sizes = np.array([size for _, size in streams], np.int64)
    if np.any(self.sizes <= 0):
      empty = [n for n, s in streams if s <= 0]
      raise ValueError(f"streams without examples: {empty}")
    self.seed, self.shuffle, self.repeat = int(seed), shuffle, repeat
    self.block_size = block_size
    self.quotas = block_quotas(rates, block_size) if repeat else None
    if repeat:
      self._slot_ends = tf.constant(np.cumsum(self.quotas), tf.int64)
      self._slot_starts = tf.constant(np.cumsum(self.quotas) - self.quotas, tf.int64)
    self.total = int(self.sizes.sum())
    self._pool_ends = tf.constant(np.cumsum(self.sizes), tf.int64)
    self._pool_starts = tf.constant(np.cumsum(self.sizes) - self.sizes, tf.int64)

  @property
  def num_tasks(self) -> int:
    return len(self.names)

  def _permute(self, index, size, seed):
    if not self.shuffle:
      return index
    return tf.random.experimental.index_shuffle(index, seed=seed, max_index=size - 1)

  def _block_slot(self, position):
    block, offset = position // self.block_size, position % self.block_size
    slot = offset
    if self.num_tasks > 1:  # one task owns every slot: keep its epochs aligned with positions
      slot = self._permute(offset, self.block_size, _seed(self.seed, "palix/blocks", block))
    task = tf.reduce_sum(tf.cast(slot >= self._slot_ends, tf.int64))
    return block, slot, task

  def _pool_index(self, position):
    return self._permute(position, self.total, _seed(self.seed, "palix/pool", 0))

  def task_of(self, position: tf.Tensor) -> tf.Tensor:
    """Task id at ``position`` (``num_tasks`` for padding past the end of a finite stream)."""
    position = tf.cast(position, tf.int64)
    if self.repeat:
      return self._block_slot(position)[2]
    index = self._pool_index(tf.minimum(position, self.total - 1))
    task = tf.reduce_sum(tf.cast(index >= self._pool_ends, tf.int64))
    return tf.where(position < self.total, task, tf.constant(self.num_tasks, tf.int64))

  def local_position(self, position: tf.Tensor, task: int) -> tf.Tensor:
    """How many examples ``task`` served before ``position`` (which must belong to it)."""
    position = tf.cast(position, tf.int64)
    if self.repeat:
      block, slot, _ = self._block_slot(position)
      return block * int(self.quotas[task]) + slot - self._slot_starts[task]
    return self._pool_index(tf.minimum(position, self.total - 1)) - self._pool_starts[task]

  def locate(self, position: tf.Tensor, task: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(example index, augmentation seed)`` at ``position``, known to belong to ``task``."""
    return self.example_at(self.local_position(position, task), task)

  def example_at(self, local: tf.Tensor, task: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(example index, augmentation seed)`` of ``task``'s ``local``-th served example."""
    local = tf.cast(local, tf.int64)
    index = local
    if self.repeat:
      size = int(self.sizes[task])
      epoch, offset = local // size, local % size
      index = self._permute(offset, size, _seed(self.seed, self.names[task], epoch))
    return index, _seed(self.seed, self.names[task] + "/augment", local)
