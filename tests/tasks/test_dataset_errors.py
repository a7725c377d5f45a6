"""A pipeline error frees its tf.data iterator before the ``DataError`` reaches the caller.

Kept alive by the error's traceback until interpreter shutdown, the iterator was destroyed while
its worker threads could no longer run their Python ops, and ``palix train`` hung after printing
the error (tests/cli/test_errors_cli.py runs that case through the real command).
"""

import gc

import pytest
import tensorflow as tf

from palix.tasks import dataset


def _live_iterators():
  gc.collect()
  return sum(isinstance(o, tf.data.Iterator) for o in gc.get_objects())


def test_a_data_error_leaves_no_live_iterator_and_no_chained_tf_error():
  before = _live_iterators()
  batches = dataset.get_batches("easy_vqa", split="train", batch_size=4, image_size=16,
                                feature_lengths={"inputs": 4, "targets": 4})
  with pytest.raises(dataset.DataError, match=r"'easy_vqa': inputs is longer than its feature "
                     r"length 4.*easy_vqa/") as info:
    next(batches)
  # Nothing chains to the TF error, whose frames held the iterator.
  assert info.value.__context__ is None and info.value.__cause__ is None
  assert _live_iterators() == before
  with pytest.raises(StopIteration):  # the stream has ended
    next(batches)


def test_a_stream_closed_early_frees_its_iterator():
  before = _live_iterators()
  batches = dataset.get_batches("easy_vqa", split="train", batch_size=2, image_size=16,
                                feature_lengths={"inputs": 32, "targets": 8})
  assert next(batches)["images"].shape == (2, 1, 16, 16, 3)
  assert _live_iterators() == before + 1
  batches.close()
  assert _live_iterators() == before
