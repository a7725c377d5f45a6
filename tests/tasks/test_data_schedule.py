"""The position -> example schedule: epochs are permutations, rates exact, resumption free."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from palix.tasks import schedule as schedule_lib


def _walk(schedule, positions):
  """(task id, example index) per position (index -1 for padding), computed in one tf.data graph."""
  def row(position):
    located = [schedule.locate(position, t)[0] for t in range(schedule.num_tasks)]
    return schedule.task_of(position), tf.stack(located + [tf.constant(-1, tf.int64)])
  rows = tf.data.Dataset.from_tensor_slices(np.asarray(list(positions), np.int64)).map(row)
  return [(int(t), int(located[t])) for t, located in rows.as_numpy_iterator()]


def _local_positions(schedule, positions, task):
  rows = tf.data.Dataset.from_tensor_slices(np.asarray(list(positions), np.int64))
  return [int(n) for n in rows.map(lambda p: schedule.local_position(p, task)).as_numpy_iterator()]


def test_block_quotas():
  np.testing.assert_array_equal(schedule_lib.block_quotas([3, 1], 1000), [750, 250])
  np.testing.assert_array_equal(schedule_lib.block_quotas([1, 1, 1], 1000), [334, 333, 333])
  np.testing.assert_array_equal(schedule_lib.block_quotas([1e6, 1], 1000), [999, 1])
  for rates in ([0.3, 0.7], [5, 1, 2], [1] * 7):
    quotas = schedule_lib.block_quotas(rates, 100)
    assert quotas.sum() == 100 and np.all(quotas >= 1)
    assert np.all(np.abs(quotas - np.array(rates) / sum(rates) * 100) < 1 + 1e-9)
  with pytest.raises(ValueError, match="positive"):
    schedule_lib.block_quotas([1, 0])


def test_single_task_epochs_are_fresh_permutations():
  schedule = schedule_lib.Schedule([("t:train", 7)], [1.0], seed=3, shuffle=True, repeat=True,
                                   block_size=10)
  walk = [index for _, index in _walk(schedule, range(21))]
  epochs = [walk[0:7], walk[7:14], walk[14:21]]
  for epoch in epochs:
    assert sorted(epoch) == list(range(7))
  assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
  in_order = schedule_lib.Schedule([("t:train", 7)], [1.0], seed=3, shuffle=False, repeat=True)
  assert [i for _, i in _walk(in_order, range(9))] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


def test_mixture_rates_are_exact_per_block_and_each_task_cycles_its_examples():
  schedule = schedule_lib.Schedule([("a:train", 5), ("b:train", 3)], [3.0, 1.0], seed=0,
                                   shuffle=True, repeat=True, block_size=20)
  walk = _walk(schedule, range(60))
  for block in range(3):
    counts = collections.Counter(t for t, _ in walk[20 * block:20 * block + 20])
    assert counts == {0: 15, 1: 5}
  by_local = collections.defaultdict(dict)
  locals_by_task = [_local_positions(schedule, range(60), t) for t in range(2)]
  for position, (t, index) in enumerate(walk):
    by_local[t][locals_by_task[t][position]] = index
  for t, size in ((0, 5), (1, 3)):
    served = by_local[t]
    assert sorted(served) == list(range(len(served)))  # local positions 0, 1, ... without gaps
    for start in range(0, len(served) - size + 1, size):  # every epoch of a task is complete
      assert sorted(served[n] for n in range(start, start + size)) == list(range(size))


def test_finite_stream_visits_every_example_once_then_pads():
  schedule = schedule_lib.Schedule([("a:test", 4), ("b:test", 3)], [1.0, 9.0], seed=1,
                                   shuffle=True, repeat=False)
  walk = _walk(schedule, range(10))
  assert sorted(walk[:7]) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
  assert walk[7:] == [(2, -1)] * 3


def test_seeds_change_order_and_task_names_isolate_epoch_orders():
  def make(seed, names):
    return schedule_lib.Schedule([(n, 50) for n in names], [1.0] * len(names), seed=seed,
                                 shuffle=True, repeat=True, block_size=100)
  alone = make(0, ["a"])
  alone_order = [i for _, i in _walk(alone, range(100))]
  assert alone_order != [i for _, i in _walk(make(1, ["a"]), range(100))]
  # In a mixture, task 'a' serves the same example at the same local position as alone: its
  # epoch permutations depend on its stream name and the seed only.
  mixed = make(0, ["a", "b"])
  walk = _walk(mixed, range(200))
  local_positions = _local_positions(mixed, range(200), 0)
  checked = 0
  for position, (task, index) in enumerate(walk):
    if task == 0:
      assert index == alone_order[local_positions[position]]
      checked += 1
  assert checked == 100
