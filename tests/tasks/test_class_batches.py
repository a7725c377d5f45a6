"""Classification batches: the pixels and labels of the source, the stream guarantees of
``get_batches`` (determinism, exact resumption, disjoint shards, one pass visits every example
once), bad examples named, and the mixed-size canvas sources."""

import itertools

import numpy as np
import pytest

from palix.tasks import class_batches
from palix.tasks import class_tasks
from palix.tasks.sources import class_sources

from tasks_testdata import needs_fashion_mnist  # pylint: disable=g-bad-import-order

SIZE = 37  # examples per split of the counting task: not a multiple of any batch size used


class CountingSource(class_sources.ClassSource):
  """Example ``i``: a 4x6 image whose red channel is ``i`` (so a batch row names its example),
  label ``i % 3``; example ``BAD`` of ``train`` is zero-sized when ``bad`` is set."""
  BAD = 5

  def __init__(self, bad=False):
    self.bad = bad

  @property
  def class_names(self):
    return ("a", "b", "c")

  def num_examples(self, split):
    self.check_split(split)
    return SIZE

  def example(self, split, index):
    self.check_index(split, index)
    if self.bad and split == "train" and index == self.BAD:
      return np.zeros((0, 6, 3), np.uint8), 0
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = index
    pixels[..., 1] = 200  # green marks real pixels (padding rows are black)
    return pixels, index % 3


class_tasks.add_class_task("test_counting_class", CountingSource(), flip=False, replace=True)
class_tasks.add_class_task("test_bad_class", CountingSource(bad=True), flip=False, replace=True)


def _take(count, name="test_counting_class", **kwargs):
  kwargs.setdefault("split", "train")
  kwargs.setdefault("batch_size", 4)
  kwargs.setdefault("image_size", 4)
  return list(itertools.islice(class_batches.get_class_batches(name, **kwargs), count))


def _indices(batch):
  """The example index of every row (red channel in [-1, 1] back to 0..255)."""
  return np.rint((batch["images"][:, 0, 0, 0] + 1) * 127.5).astype(int)


def test_rows_carry_their_examples_pixels_and_labels():
  batch, = _take(1, shuffle=False, image_size=6)
  np.testing.assert_array_equal(_indices(batch), [0, 1, 2, 3])
  np.testing.assert_array_equal(batch["labels"], [0, 1, 2, 0])
  np.testing.assert_array_equal(batch["image_mask"], [1, 1, 1, 1])
  assert batch["images"].shape == (4, 6, 6, 3) and batch["images"].dtype == np.float32
  assert batch["labels"].dtype == np.int32
  np.testing.assert_allclose(batch["images"][..., 1], 200 / 127.5 - 1, atol=1e-6)


def test_same_arguments_same_batches_and_exact_resumption():
  first = _take(6, seed=3)
  again = _take(6, seed=3)
  resumed = _take(2, seed=3, start_step=4)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["images"], b["images"])
  for a, b in zip(first[4:], resumed):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  other_seed = _take(6, seed=4)
  assert any(not np.array_equal(_indices(a), _indices(b)) for a, b in zip(first, other_seed))


def test_shards_are_disjoint_slices_of_the_global_batch():
  global_batches = _take(3, batch_size=6)
  shards = [_take(3, batch_size=2, shard_index=s, num_shards=3) for s in range(3)]
  for step, whole in enumerate(global_batches):
    np.testing.assert_array_equal(
        _indices(whole), np.concatenate([_indices(shards[s][step]) for s in range(3)]))


def test_an_epoch_visits_every_example_once():
  epoch = np.concatenate([_indices(b) for b in _take(-(-SIZE // 4), seed=1)])[:SIZE]
  assert sorted(epoch.tolist()) == list(range(SIZE))


def test_one_pass_visits_every_example_once_and_pads_the_last_batch():
  batches = list(class_batches.get_class_batches(
      "test_counting_class", split="test", batch_size=8, image_size=4, repeat=False))
  assert len(batches) == -(-SIZE // 8)
  mask = np.concatenate([b["image_mask"] for b in batches]).astype(bool)
  indices = np.concatenate([_indices(b) for b in batches])
  assert mask[:SIZE].all() and not mask[SIZE:].any()
  assert sorted(indices[mask].tolist()) == list(range(SIZE))
  padding = np.concatenate([b["images"] for b in batches])[~mask]
  assert np.all(padding == -1.0)  # padding rows are black


def test_a_zero_sized_image_is_an_error_naming_the_example():
  with pytest.raises(class_batches.DataError,
                     match=r"test_bad_class:train\[5\]: zero-sized image \(0x6 pixels\)"):
    _take(SIZE, name="test_bad_class", shuffle=False)


def test_unknown_task_and_resize_mode_are_named():
  with pytest.raises(ValueError, match="no classification task 'nope'.*fashion_mnist_class"):
    _take(1, name="nope")
  with pytest.raises(ValueError, match="resize_mode must be one of"):
    _take(1, resize_mode="squash")


@needs_fashion_mnist
def test_fashion_mnist_class_matches_the_idx_files():
  from palix.tasks.sources import fashion_mnist  # pylint: disable=g-import-not-at-top
  images, labels = fashion_mnist.load("test")
  batch, = _take(1, name="fashion_mnist_class", split="test", shuffle=False, image_size=28)
  np.testing.assert_array_equal(batch["labels"], labels[:4])
  np.testing.assert_allclose(batch["images"][..., 0], images[:4] / 127.5 - 1, atol=1e-5)


@needs_fashion_mnist
def test_canvas_source_sizes_labels_and_determinism():
  base = class_sources.FashionMnistClassSource()
  source = class_sources.CanvasClassSource(base, min_side=16, max_side=96)
  sizes = []
  for index in range(40):
    pixels, label = source.example("test", index)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert source.image_size("test", index) == pixels.shape[:2]
    assert 16 <= min(pixels.shape[:2]) and max(pixels.shape[:2]) <= 96
    assert label == base.example("test", index)[1]
    sizes.append(pixels.shape[:2])
  again, _ = source.example("test", 7)
  np.testing.assert_array_equal(again, source.example("test", 7)[0])
  aspects = [h / w for h, w in sizes]
  assert min(aspects) < 0.6 and max(aspects) > 1.6  # mixed aspect ratios, both ways
  assert len(set(sizes)) > 30
