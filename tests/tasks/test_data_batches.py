"""The batch API contract: keys, shapes, dtypes; determinism; exact resumption; disjoint shards."""

import itertools

import numpy as np
import pytest

from palix import loc_tokens
from palix.models import base as model_base
from palix.tasks import dataset
from palix.tasks import preprocessors
from palix.tasks import registry
from palix.tasks import show
from palix.tasks.sources import jsonl
from palix.tasks.sources import shapes_detection

from tasks_testdata import needs_fashion_mnist  # pylint: disable=g-bad-import-order

LENGTHS = {"inputs": 24, "targets": 48}
KEYS = set(model_base.MODEL_FEATURES)  # the batch schema; DTYPES below restates it by hand
DTYPES = {"images": np.float32, "image_mask": np.int32, "encoder_input_tokens": np.int32,
          "decoder_input_tokens": np.int32, "decoder_target_tokens": np.int32,
          "decoder_loss_weights": np.float32}


def _take(name, count, **kwargs):
  kwargs.setdefault("feature_lengths", LENGTHS)
  kwargs.setdefault("image_size", 16)
  kwargs.setdefault("split", "train")
  return list(itertools.islice(dataset.get_batches(name, **kwargs), count))


def _assert_same(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_list_tasks_has_the_builtins():
  names = dataset.list_tasks()
  assert set(registry.BUILTIN_TASKS) | set(registry.BUILTIN_MIXTURES) <= set(names)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=needs_fashion_mnist) if name in (
        "fashion_mnist_caption", "shapes_detection", "shapes_captions") else name
    for name in sorted(registry.BUILTIN_TASKS)
    if name not in registry.EPISODE_TASKS])  # several images per example: test_episodes.py
def test_every_builtin_task_yields_model_batches(name, vocab):
  frames = registry.MOVING_SHAPES_FRAMES
  (batch,) = _take(name, 1, batch_size=2, num_images=frames)
  assert set(batch) == KEYS | {"task_ids"}  # training streams name each row's task
  np.testing.assert_array_equal(batch.pop("task_ids"), [0, 0])  # a task is its own mixture
  shapes = {"images": (2, frames, 16, 16, 3), "image_mask": (2, frames)}
  for key, value in batch.items():
    assert value.dtype == DTYPES[key], key
    assert value.shape == shapes.get(key, (2, LENGTHS["targets" if "decoder" in key else "inputs"]))
  assert batch["images"].min() >= -1 and batch["images"].max() <= 1
  expected_images = frames if name.startswith("moving_shapes") else 1
  np.testing.assert_array_equal((batch["image_mask"] > 0).sum(1), [expected_images] * 2)
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                batch["decoder_target_tokens"][:, :-1])
  assert np.all(batch["decoder_input_tokens"][:, 0] == 0)
  np.testing.assert_array_equal(batch["decoder_loss_weights"], batch["decoder_target_tokens"] > 0)
  for prompt, target in show.batch_texts(batch, vocab):
    assert prompt.split()[0] in ("caption", "answer", "detect") and target


@pytest.fixture(scope="module")
def resume_mix():
  """A mixture of a file-based and a generated task (both kinds of source)."""
  registry.ensure_registered()
  registry.add_task("test_shapes_only_detection",  # easy-VQA shapes only: no Fashion-MNIST needed
                    shapes_detection.ShapesDetectionSource(fashion_fraction=0.0), replace=True)
  registry.add_mixture("test_resume_mix", [("easy_vqa_caption", 2.0),
                                           ("test_shapes_only_detection", 1.0)], replace=True)
  return "test_resume_mix"


@pytest.fixture(scope="module")
def reference(resume_mix):
  return _take(resume_mix, 6, batch_size=4, seed=5)


def test_same_arguments_same_batches(resume_mix, reference):
  _assert_same(reference, _take(resume_mix, 6, batch_size=4, seed=5))


def test_start_step_resumes_exactly(resume_mix, reference):
  _assert_same(reference[4:], _take(resume_mix, 2, batch_size=4, seed=5, start_step=4))


def test_shards_are_disjoint_parts_of_the_global_batch(resume_mix, reference):
  shards = [_take(resume_mix, 6, batch_size=2, seed=5, num_shards=2, shard_index=s)
            for s in range(2)]
  for step, batch in enumerate(reference):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([shards[0][step][key], shards[1][step][key]]), err_msg=key)


def test_mixture_uses_both_tasks_at_its_rates_and_the_seed_matters(resume_mix, reference, vocab):
  (batch,) = _take(resume_mix, 1, batch_size=300, seed=0, image_size=16)
  kinds = [prompt.split()[0] for prompt, _ in show.batch_texts(batch, vocab)]
  # rates 2:1 over a 1000-slot block: 667 caption and 333 detection slots, shuffled; 300 rows
  # follow a hypergeometric draw (sd ~7); 8 sd of slack
  assert abs(kinds.count("caption") - 200) < 60
  assert kinds.count("detect") + kinds.count("caption") == 300
  assert not np.array_equal(batch["images"][:4], reference[0]["images"])  # seed 0 vs seed 5


def test_training_augmentation_changes_per_epoch_but_evaluation_does_not(media_dir):
  files = {"train": str(media_dir / "data.jsonl"), "test": str(media_dir / "data.jsonl")}
  registry.add_task("test_augmented", jsonl.JsonlSource(files),
                    preprocessors.DecodeMedia(crop_min_scale=0.5, flip=True), replace=True)
  kwargs = dict(batch_size=4, num_images=2, shuffle=False)  # one batch = one epoch of 4 examples
  for split, changes in (("train", True), ("test", False)):
    first, second = _take("test_augmented", 2, split=split, **kwargs)
    np.testing.assert_array_equal(first["decoder_target_tokens"], second["decoder_target_tokens"])
    assert changes != np.array_equal(first["images"], second["images"]), split


@needs_fashion_mnist
def test_detection_targets_match_the_canvas_boxes(vocab):
  source = shapes_detection.ShapesDetectionSource()
  (batch,) = _take("shapes_detection", 1, split="test", batch_size=4, shuffle=False,
                   image_size=32, repeat=False)
  for row, (_, target) in enumerate(show.batch_texts(batch, vocab)):
    _, placed = source.objects("test", row)
    found = loc_tokens.parse_detections(target)
    expected = sorted((tuple(c / 128 for c in box), label) for box, label in placed)
    got = sorted((d.box, d.label) for d in found)
    assert [label for _, label in got] == [label for _, label in expected]
    assert np.abs(np.array([b for b, _ in got]) - np.array([b for b, _ in expected])).max() \
        <= 0.5 / 1023 + 1e-9


def test_video_clips_have_the_configured_frame_count(vocab):
  frames = registry.MOVING_SHAPES_FRAMES
  (batch,) = _take("moving_shapes_vqa", 1, batch_size=3, num_images=frames + 2, image_size=32)
  # the first frame starts the clip, the others continue it (palix_model.image_groups)
  np.testing.assert_array_equal(batch["image_mask"], [[1] + [2] * (frames - 1) + [0, 0]] * 3)
  assert np.all(batch["images"][:, frames:] == 0)
  for clip, (_, answer) in zip(batch["images"], show.batch_texts(batch, vocab)):
    background = clip[0, 0, 0]
    centres = []
    for frame in clip[:frames]:
      ys, xs = np.nonzero(np.abs(frame - background).sum(-1) > 0.3)
      centres.append((ys.mean(), xs.mean()))
    dy, dx = np.array(centres[-1]) - np.array(centres[0])
    moved = ("down" if dy > 0 else "up") if abs(dy) > abs(dx) else ("right" if dx > 0 else "left")
    assert moved == answer


def test_bad_requests_are_clear_errors():
  with pytest.raises(ValueError, match="no task or mixture 'easy_vqa_typo'"):
    dataset.get_task_or_mixture("easy_vqa_typo")
  with pytest.raises(ValueError, match="has no split 'validation'"):
    _take("easy_vqa", 1, split="validation", batch_size=1)
  with pytest.raises(dataset.DataError, match=r"more images per example than num_images=1"):
    _take("moving_shapes_vqa", 1, batch_size=1)
  with pytest.raises(dataset.DataError,
                     match=r"'easy_vqa': inputs is longer than its feature length 4.*easy_vqa/"):
    _take("easy_vqa", 1, batch_size=1, feature_lengths={"inputs": 4, "targets": 4})
  with pytest.raises(ValueError, match="shard_index"):
    _take("easy_vqa", 1, batch_size=1, shard_index=2, num_shards=2)
