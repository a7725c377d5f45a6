"""``batch_parts``: every batch holds each task's share of rows, in one part per geometry, with the
batch API's guarantees (determinism, exact resumption, disjoint shards)."""

import itertools

import numpy as np
import pytest

from palix.tasks import dataset
from palix.tasks import geometry
from palix.tasks import registry
from palix.tasks import show

MAX_LENGTHS = {"inputs": 16, "targets": 8}
NUM_IMAGES = registry.MOVING_SHAPES_FRAMES + 1
# easy_vqa and its captions share a geometry (one part); the clips keep MAX_LENGTHS
BY_TASK = {"easy_vqa_caption": {"inputs": 14, "targets": 6},
           "easy_vqa": {"inputs": 14, "targets": 6}}
RATES = (("easy_vqa_caption", 2.0), ("moving_shapes_vqa", 1.0), ("easy_vqa", 3.0))


@pytest.fixture(scope="module")
def mix():
  registry.ensure_registered()
  registry.add_mixture("test_batch_parts_mix", RATES, replace=True)
  return "test_batch_parts_mix"


def _take(name, count, **kwargs):
  kwargs.setdefault("batch_size", 12)
  kwargs.setdefault("feature_lengths_by_task", BY_TASK)
  return list(itertools.islice(dataset.get_batches(
      name, split="train", feature_lengths=MAX_LENGTHS, num_images=NUM_IMAGES, image_size=16,
      seed=3, batch_parts=True, **kwargs), count))


@pytest.fixture(scope="module")
def reference(mix):
  return _take(mix, 4)


def _assert_same(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert len(a) == len(b)
    for part_a, part_b in zip(a, b):
      for key in part_a:
        np.testing.assert_array_equal(part_a[key], part_b[key], err_msg=key)


def test_rows_follow_the_rates_in_every_batch():
  assert dataset.part_rows([2.0, 1.0, 3.0], 12) == [4, 2, 6]
  assert sum(dataset.part_rows([3, 1, 1, 3, 2, 1, 2], 32)) == 32
  with pytest.raises(ValueError, match="batch_size 2 .* less than the 3 tasks"):
    dataset.part_rows([1.0, 1.0, 1.0], 2)


def _order(mix):
  tasks, rates = dataset.tasks_and_rates(dataset.get_task_or_mixture(mix))
  return [t.name for t in tasks], rates


def test_each_part_has_its_tasks_rows_in_their_geometry(mix, reference, vocab):
  names, _ = _order(mix)
  assert names == ["easy_vqa", "easy_vqa_caption", "moving_shapes_vqa"]  # seqio sorts them
  for still, video in reference:
    # easy_vqa rows (6) then caption rows (4): one image, the shared lengths
    assert still["images"].shape == (10, 1, 16, 16, 3)
    assert still["encoder_input_tokens"].shape == (10, 14)
    assert still["decoder_target_tokens"].shape == (10, 6)
    kinds = [prompt.split()[0] for prompt, _ in show.batch_texts(still, vocab)]
    assert kinds == ["answer"] * 6 + ["caption"] * 4
    # the clips: their own 6 frames (not NUM_IMAGES), the maximum lengths
    assert video["images"].shape == (2, registry.MOVING_SHAPES_FRAMES, 16, 16, 3)
    assert video["decoder_target_tokens"].shape == (2, 8)
    assert all(a in ("up", "down", "left", "right") for _, a in show.batch_texts(video, vocab))
    np.testing.assert_array_equal(still["image_mask"], np.ones(still["image_mask"].shape))
    # a clip's first frame starts it, the others continue it (palix_model.image_groups)
    np.testing.assert_array_equal(video["image_mask"], [[1, 2, 2, 2, 2, 2]] * 2)
    # task_ids index the mixture's tasks
    assert [names[i] for i in still["task_ids"]] == ["easy_vqa"] * 6 + ["easy_vqa_caption"] * 4
    assert [names[i] for i in video["task_ids"]] == ["moving_shapes_vqa"] * 2


def test_determinism_resumption_and_shards(mix, reference):
  _assert_same(reference, _take(mix, 4))
  _assert_same(reference[2:], _take(mix, 2, start_step=2))
  shards = [_take(mix, 4, batch_size=6, num_shards=2, shard_index=s) for s in range(2)]
  for step, batch in enumerate(reference):
    for part_index, part in enumerate(batch):
      halves = [shards[s][step][part_index] for s in range(2)]
      rows = [len(h["images"]) for h in halves]
      for key in part:  # each shard has every task's half of the rows, in task order
        by_task = np.split(part[key], np.cumsum([2 * r for r in _task_rows(part_index, 6)])[:-1])
        shard_rows = [np.split(h[key], np.cumsum(_task_rows(part_index, 6))[:-1]) for h in halves]
        for task_rows, first, second in zip(by_task, *shard_rows):
          np.testing.assert_array_equal(task_rows, np.concatenate([first, second]), err_msg=key)
      assert sum(rows) == len(part["images"])


def _task_rows(part_index, batch_size):
  """Rows of each task of a part, per shard (easy_vqa, caption | video)."""
  vqa, caption, video = dataset.part_rows([3.0, 2.0, 1.0], batch_size)
  return [vqa, caption] if part_index == 0 else [video]


def test_a_task_serves_each_example_once_per_epoch(reference):
  """A task's rows walk its epoch: no example twice among 24 of 4000 captions."""
  images = np.concatenate([still["images"][6:, 0] for still, _ in reference])
  distinct = {np.sort(row.ravel()).tobytes() for row in images}  # sorted pixels: flip-invariant
  assert len(distinct) == len(images) == 16


def test_task_geometry_takes_the_sources_image_count():
  video, caption = "moving_shapes_vqa", "easy_vqa_caption"
  assert geometry.task_geometry(video, num_images=8, feature_lengths=MAX_LENGTHS) == \
      geometry.Geometry(registry.MOVING_SHAPES_FRAMES, MAX_LENGTHS)
  assert geometry.task_geometry(caption, num_images=8, feature_lengths=MAX_LENGTHS,
                                feature_lengths_by_task=BY_TASK) == geometry.Geometry(
                                    1, BY_TASK["easy_vqa_caption"])
  with pytest.raises(ValueError, match="'moving_shapes_vqa' has 6 images per example but "
                                       "num_images is 2"):
    geometry.task_geometry(video, num_images=2, feature_lengths=MAX_LENGTHS)


@pytest.mark.parametrize("kwargs, message", [
    (dict(feature_lengths_by_task={"easy_vqa_captoin": MAX_LENGTHS}),
     "names 'easy_vqa_captoin', which is not a registered task"),
    (dict(feature_lengths_by_task={"easy_vqa_caption": {"inputs": 4}}),
     r"feature_lengths_by_task\['easy_vqa_caption'\] must have the keys \['inputs', 'targets'\]"),
    (dict(feature_lengths_by_task={"easy_vqa_caption": {"inputs": 4, "targets": 9}}),
     r"\['easy_vqa_caption'\]\['targets'\] = 9: must be an integer in \[1, 8\]"),
    (dict(batch_parts=False), "feature_lengths_by_task needs batch_parts=True"),
    (dict(repeat=False), "batch_parts is for training streams"),
])
def test_bad_geometry_requests_are_clear_errors(mix, kwargs, message):
  arguments = dict(split="train", batch_size=6, feature_lengths=MAX_LENGTHS,
                   num_images=NUM_IMAGES, batch_parts=True, feature_lengths_by_task=BY_TASK)
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=message):
    dataset.make_dataset(mix, **arguments)
