"""NaViT packing, data side: first-fit packing respects the limits, packed arrays hold every image
exactly where ``image_ids`` says, a packed stream is deterministic and exactly resumable with
counted carry-over, trims and drops, a finite pass packs every example once, per-image sequences
keep the aspect ratio and drop the right number of tokens, and bad input is named."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from palix.tasks import class_batches
from palix.tasks import class_tasks
from palix.tasks import image_patches
from palix.tasks import packing
from palix.tasks.sources import class_sources

P = 2
SIZES = {"train": 53, "test": 29}


class VariedSource(class_sources.ClassSource):
  """Example ``i``: an image of ``(2 + i % 5) x (2 + (3 * i) % 7)`` patches of 2 px whose red
  channel is ``i`` (so every packed token names its example), label ``i % 4``."""

  @property
  def class_names(self):
    return ("a", "b", "c", "d")

  def num_examples(self, split):
    self.check_split(split)
    return SIZES[split]

  def example(self, split, index):
    self.check_index(split, index)
    pixels = np.full((P * (2 + index % 5), P * (2 + (3 * index) % 7), 3), 90, np.uint8)
    pixels[..., 0] = index
    return pixels, index % 4


class_tasks.add_class_task("test_varied_class", VariedSource(), flip=False, replace=True)
OPTIONS = packing.PackingOptions(patch_size=P, seq_len=64, max_images=4, images_per_row=3.5,
                                 resolution=packing.Resolution(max_side=2 * P * 8))


def _image(tokens, name, grid=None, label=0):
  grid = grid or (1, tokens)
  return packing.PatchedImage(np.full((tokens, 3), float(tokens), np.float32),
                              np.zeros(tokens, np.int32), np.arange(tokens, dtype=np.int32),
                              grid, {"labels": label}, name)


def _red_index(values):
  return np.rint((values + 1) * 127.5).astype(int)


def test_first_fit_decreasing_respects_both_limits_and_places_largest_first():
  rng = np.random.RandomState(0)
  images = [_image(int(n), f"im{i}") for i, n in enumerate(rng.randint(1, 15, 30))]
  rows = [[] for _ in range(4)]
  left = packing.first_fit_decreasing(images, rows, seq_len=20, max_images=3)
  placed = [image for row in rows for image in row]
  assert sorted(i.record_id for i in placed + left) == sorted(i.record_id for i in images)
  assert all(sum(i.num_tokens for i in row) <= 20 and len(row) <= 3 for row in rows)
  # Largest first: nothing left over is larger than the room any row had when it was tried,
  # and every left-over image was too large for all rows (or they were full) at the end.
  for image in left:
    assert all(sum(i.num_tokens for i in row) + image.num_tokens > 20 or len(row) == 3
               for row in rows)
  assert [i.record_id for i in left] == sorted((i.record_id for i in left),
                                               key=lambda r: int(r[2:]))  # input order kept


def test_pack_rows_puts_every_token_where_image_ids_say():
  rows = [[_image(3, "a", (1, 3), 5), _image(4, "b", (2, 2), 6)], [_image(2, "c", (2, 1), 7)]]
  out = packing.pack_rows(rows, seq_len=8, max_images=3, patch_dim=3,
                          feature_dtypes={"labels": np.int32})
  np.testing.assert_array_equal(out["image_ids"], [[1, 1, 1, 2, 2, 2, 2, 0],
                                                   [1, 1, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["grid_sizes"][0], [[1, 3], [2, 2], [0, 0]])
  np.testing.assert_array_equal(out["labels"], [[5, 6, 0], [7, 0, 0]])
  np.testing.assert_array_equal(out["image_mask"], [[1, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(out["patches"][0, :, 0], [3, 3, 3, 4, 4, 4, 4, 0])
  np.testing.assert_array_equal(out["xs"][0], [0, 1, 2, 0, 1, 2, 3, 0])


def test_pack_rows_names_the_row_and_the_limit():
  kw = dict(patch_dim=3, feature_dtypes={"labels": np.int32})
  with pytest.raises(packing.DataError, match=r"packed row 0 has 3 images \(a, b, c\); a row "
                                              r"holds at most max_images=2"):
    packing.pack_rows([[_image(1, "a"), _image(1, "b"), _image(1, "c")]], seq_len=8,
                      max_images=2, **kw)
  with pytest.raises(packing.DataError, match=r"packed row 0 has 9 tokens \(a, b\); a row holds "
                                              r"at most seq_len=8"):
    packing.pack_rows([[_image(5, "a"), _image(4, "b")]], seq_len=8, max_images=2, **kw)
  with pytest.raises(packing.DataError, match=r"big: 12 patches \(grid 1x12\) exceed the "
                                              r"sequence length 8"):
    packing.WindowPacker(rows=2, seq_len=8, max_images=2).step([_image(12, "big")], [])
  with pytest.raises(packing.DataError, match="empty: zero-sized image"):
    packing.check_image(_image(0, "empty", (0, 0)), 8)


def _windows(count, seed=0):
  rng = np.random.RandomState(seed)
  return [[_image(int(n), f"w{j}i{i}") for i, n in enumerate(rng.randint(1, 13, 9))]
          for j in range(count)]


def test_window_packer_resumes_exactly_from_the_previous_window():
  windows = _windows(8)
  packer = packing.WindowPacker(rows=3, seq_len=16, max_images=4, min_kept_share=0.5)
  carried, steps = [], []
  for window in windows:
    rows, carried = packer.step(window, carried)
    steps.append([[i.record_id + f":{i.num_tokens}" for i in row] for row in rows])
  stats = packer.stats
  assert stats.carried_over > 0 and stats.dropped > 0 and stats.trimmed > 0  # all paths taken
  scheduled = sum(len(w) for w in windows)
  assert stats.images + stats.dropped + len(carried) == scheduled
  resumed = packing.WindowPacker(rows=3, seq_len=16, max_images=4, min_kept_share=0.5)
  carried = resumed.leftover(windows[4])
  for k, window in enumerate(windows[5:], 5):
    rows, carried = resumed.step(window, carried)
    assert [[i.record_id + f":{i.num_tokens}" for i in row] for row in rows] == steps[k]


def test_trimmed_images_keep_a_subset_of_their_patches_and_coordinates():
  image = _image(10, "t")
  trimmed = packing.trim(image, 6)
  assert trimmed.num_tokens == 6 and trimmed.grid == image.grid
  assert set(trimmed.xs.tolist()) < set(image.xs.tolist())
  assert list(trimmed.xs) == sorted(trimmed.xs)
  np.testing.assert_array_equal(packing.trim(image, 6).xs, trimmed.xs)  # deterministic


def test_carry_all_packs_every_image_exactly_once():
  windows = _windows(5, seed=1)
  packer = packing.WindowPacker(rows=2, seq_len=16, max_images=3, carry_all=True)
  carried, placed = [], []
  for window in windows:
    rows, carried = packer.step(window, carried)
    placed += [i.record_id for row in rows for i in row]
  for rows in packer.flush(carried):
    placed += [i.record_id for row in rows for i in row]
  assert sorted(placed) == sorted(i.record_id for w in windows for i in w)
  assert packer.stats.dropped == 0 and packer.stats.trimmed == 0


def test_patch_sequence_keeps_the_aspect_ratio_and_the_pixels():
  rng = np.random.RandomState(0)
  image = rng.randint(0, 256, (30, 50, 3)).astype(np.uint8)
  options = packing.PackingOptions(patch_size=4, resolution=packing.Resolution(max_side=40))
  out = image_patches.patch_sequence(tf.constant(image), options=options, training=False,
                                     seed=tf.constant([1, 2], tf.int64))
  assert tuple(out["grid"].numpy()) == (6, 10)  # longest side 50 -> 40 px; 30 * 0.8 = 24 px
  resized = tf.image.resize(tf.cast(image, tf.float32), [24, 40], antialias=True).numpy()
  resized = np.clip(resized, 0, 255) / 127.5 - 1
  ys, xs = out["ys"].numpy(), out["xs"].numpy()
  for t in (0, 7, 59):
    want = resized[4 * ys[t]:4 * ys[t] + 4, 4 * xs[t]:4 * xs[t] + 4].reshape(-1)
    np.testing.assert_allclose(out["patches"].numpy()[t], want, atol=1e-5)
  # A small image keeps its native size (rounded to whole patches).
  small = image_patches.patch_sequence(tf.constant(image[:9, :17]), options=options,
                                       training=False, seed=tf.constant([1, 2], tf.int64))
  assert tuple(small["grid"].numpy()) == (2, 4)


def test_token_dropping_keeps_the_expected_count_in_training_only():
  image = tf.zeros((40, 40, 3), tf.uint8)  # 10 x 10 patches of 4
  seed = tf.constant([3, 4], tf.int64)
  drop = packing.TokenDropping(rate=0.3)
  options = packing.PackingOptions(patch_size=4, resolution=packing.Resolution(max_side=40),
                                   token_dropping=drop)
  out = image_patches.patch_sequence(image, options=options, training=True, seed=seed)
  assert int(out["num_tokens"]) == 70
  coords = set(zip(out["ys"].numpy().tolist(), out["xs"].numpy().tolist()))
  assert len(coords) == 70  # distinct original coordinates
  assert int(image_patches.patch_sequence(image, options=options, training=False,
                                          seed=seed)["num_tokens"]) == 100
  scaled = packing.TokenDropping(rate=0.3, reference_tokens=200)  # 100 tokens: share 0.15
  assert float(image_patches.drop_share(100, scaled, seed)) == pytest.approx(0.15)
  beta = packing.TokenDropping(beta=(2.0, 5.0), max_rate=0.5)
  shares = [float(image_patches.drop_share(100, beta, tf.constant([s, 0], tf.int64)))
            for s in range(200)]
  assert 0 <= min(shares) and max(shares) <= 0.5
  assert np.mean(shares) == pytest.approx(2 / 7, abs=0.04)  # Beta(2, 5) mean, few capped at 0.5


def test_bad_options_are_named():
  with pytest.raises(ValueError, match=r"TokenDropping.rate = 1.0: a token-drop rate must be in "
                                       r"\[0, 1\)"):
    packing.TokenDropping(rate=1.0).check()
  with pytest.raises(ValueError, match="TokenDropping.max_rate = -0.1"):
    packing.TokenDropping(max_rate=-0.1).check()
  with pytest.raises(ValueError, match="Resolution.train_sides"):
    packing.PackingOptions(patch_size=8, resolution=packing.Resolution(
        max_side=32, train_sides=(16, 64))).check()


def _packed(count, **kwargs):
  kwargs.setdefault("split", "train")
  kwargs.setdefault("batch_size", 3)
  kwargs.setdefault("packing", OPTIONS)
  return list(itertools.islice(class_batches.get_class_batches("test_varied_class", **kwargs),
                               count))


def _images_of(batch):
  """``{(example index, label, grid)}`` of every real slot of a packed batch."""
  found = set()
  for r, row_ids in enumerate(batch["image_ids"]):
    for slot in range(batch["image_mask"].shape[1]):
      if batch["image_mask"][r, slot]:
        red = _red_index(batch["patches"][r][row_ids == slot + 1][:, 0])
        assert len(set(red.tolist())) == 1  # every token of the slot is the same example
        found.add((int(red[0]), int(batch["labels"][r, slot]),
                   tuple(batch["grid_sizes"][r, slot])))
  return found


def test_packed_stream_is_deterministic_and_resumes_exactly():
  stats = packing.PackingStats()
  first = _packed(7, seed=2, packing_stats=stats)
  again = _packed(7, seed=2)
  resumed = _packed(3, seed=2, start_step=4)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  for a, b in zip(first[4:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert stats.carried_over > 0  # the resumed steps did depend on the carry-over
  for batch in first:
    for index, label, grid in _images_of(batch):
      assert label == index % 4 and grid == (2 + index % 5, 2 + (3 * index) % 7)


def test_packed_shards_are_disjoint():
  shards = [_packed(2, shard_index=s, num_shards=2) for s in range(2)]  # 40 of 53: one epoch
  seen = [{i for batch in shard for i, _, _ in _images_of(batch)} for shard in shards]
  assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_finite_packed_pass_has_every_test_example_once():
  stats = packing.PackingStats()
  batches = list(class_batches.get_class_batches("test_varied_class", split="test", batch_size=3,
                                                 repeat=False, packing=OPTIONS,
                                                 packing_stats=stats))
  found = [item for batch in batches for item in _images_of(batch)]
  assert sorted(i for i, _, _ in found) == list(range(SIZES["test"]))
  assert stats.dropped == 0 and stats.images == SIZES["test"]


def test_an_image_longer_than_the_sequence_is_named():
  too_short = packing.PackingOptions(patch_size=P, seq_len=20, max_images=4, images_per_row=1.0,
                                     resolution=packing.Resolution(max_side=2 * P * 8))
  with pytest.raises(packing.DataError, match=r"test_varied_class:test\[\d+\]: \d+ patches "
                                              r"\(grid \d+x\d+\) exceed the sequence length 20"):
    list(class_batches.get_class_batches("test_varied_class", split="test", batch_size=2,
                                         repeat=False, shuffle=False, packing=too_short))
