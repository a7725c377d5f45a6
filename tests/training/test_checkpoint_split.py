"""``CheckpointSplit``'s batch plumbing that needs no model: padding rows and this process's rows."""

import dataclasses

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from palix import partitioning
from palix.training import checkpoint_split


def test_short_and_zero_padded_batches_report_their_real_rows():
  real = {"image_mask": np.ones((3, 1), np.int32),
          "encoder_input_tokens": np.array([[5, 1], [6, 1], [7, 1]], np.int32)}
  (batch, rows), = list(checkpoint_split.full_batches(iter([real]), 5))
  assert batch["image_mask"].shape == (5, 1)
  np.testing.assert_array_equal(rows, [0, 1, 2])
  zero_padded = {k: np.concatenate([v, np.zeros_like(v[:2])]) for k, v in real.items()}
  np.testing.assert_array_equal(checkpoint_split.real_rows(zero_padded), [0, 1, 2])


def test_local_rows_of_replicated_sharded_and_host_arrays():
  layout = partitioning.Partitioner().data_layout(jax.device_count() * 2)
  values = np.arange(layout.global_batch_size * 3).reshape(layout.global_batch_size, 3)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  expected = values[:layout.local_batch_size]  # one process: shard 0 holds the first rows
  for spec in (PartitionSpec(), PartitionSpec("data")):
    array = jax.device_put(values, NamedSharding(mesh, spec))
    np.testing.assert_array_equal(checkpoint_split.local_rows(array, layout), expected)
  np.testing.assert_array_equal(checkpoint_split.local_rows(values, layout), expected)
  # Another process's share of the same global batch.
  second = dataclasses.replace(layout, shard_index=1, num_shards=2,
                               global_batch_size=2 * layout.local_batch_size)
  rows = np.arange(2 * layout.local_batch_size)[:, None]
  np.testing.assert_array_equal(checkpoint_split.local_rows(rows, second),
                                rows[layout.local_batch_size:])
