"""Packed PaLI-X training streams: exactly what the schedule asks for, at each task's own size,
deterministic and exactly resumable, with carried-over and dropped examples counted, and bad
examples named (task, example, limit)."""

import itertools

import numpy as np
import pytest

from palix.layers.patch import patchify
from palix.tasks import dataset
from palix.tasks import packed_batches
from palix.tasks import packed_examples as pe
from palix.tasks import registry

P = 8
ROWS = pe.PackedRows(vit_length=112, vit_slots=8, input_length=128, target_length=24,
                     examples_per_row=8, patch_size=P)
SIDES = {"easy_vqa": 16, "moving_shapes_vqa": 32}  # 2x2 patches per image, 4x4 per frame
MIX = (("easy_vqa", 3.0), ("moving_shapes_vqa", 1.0), ("shape_names_3shot", 1.0))


@pytest.fixture(scope="module")
def mix():
  registry.ensure_registered()
  registry.add_mixture("test_packed_mix", MIX, replace=True)
  return "test_packed_mix"


def _stream(**kwargs):
  return pe.PackedStream(rows=ROWS, examples_per_step=kwargs.pop("window", 14), sides=SIDES,
                         default_side=16, separator_id=1027, **kwargs)


def _take(name, count, stats=None, **kwargs):
  kwargs.setdefault("split", "train")
  stream = _stream(window=kwargs.pop("window", 14))
  return list(itertools.islice(packed_batches.get_packed_batches(
      name, batch_size=3, stream=stream, seed=5, stats=stats, **kwargs), count))


@pytest.fixture(scope="module")
def reference(mix):
  stats = pe.PackedStats()
  return _take(mix, 4, stats), stats


def _same(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_arguments_same_batches_and_exact_resumption(mix, reference):
  batches, stats = reference
  assert stats.carried_over > 0  # the window overfills the rows: resumption must rebuild carry
  _same(batches, _take(mix, 4))
  _same(batches[2:], _take(mix, 2, start_step=2))


def test_tasks_keep_their_sides_and_clips_are_one_vit_segment(mix, reference):
  batches, _ = reference
  names = packed_batches.task_names(mix)
  seen = set()
  for batch in batches:
    for r in range(3):
      for s in np.flatnonzero(batch["example_mask"][r]):
        task = names[batch["task_ids"][r, s]]
        seen.add(task)
        index = batch["encoder_visual_index"][r][batch["encoder_segment_ids"][r] == s + 1]
        vit = index[index >= 0]
        segments = batch["image_ids"][r][vit]
        grids = batch["grid_sizes"][r][np.unique(segments) - 1]
        if task == "moving_shapes_vqa":
          assert len(np.unique(segments)) == 1 and len(vit) == 6 * 16  # one clip of 6 frames
          assert batch["ts"][r][vit].tolist() == np.repeat(np.arange(6), 16).tolist()
          assert grids.tolist() == [[4, 4]]
        elif task == "easy_vqa":
          assert len(vit) == 4 and grids.tolist() == [[2, 2]]
        else:  # 3-shot episodes: 4 images, each its own ViT segment, at the default side
          assert len(np.unique(segments)) == 4 and len(vit) == 16
  assert seen == {name for name, _ in MIX}


def test_packed_examples_are_the_evaluation_examples(mix):
  """Every packed easy-VQA example (test split, no augmentation) has the prompt, the target and
  the pixels that the one-example-per-row path gives some example at the same image size."""
  packed = _take("easy_vqa", 1, split="test", shuffle=False, window=20)[0]
  plain = next(dataset.get_batches("easy_vqa", split="test", batch_size=20, image_size=16,
                                   feature_lengths={"inputs": 16, "targets": 8}, shuffle=False,
                                   repeat=False))
  patches = np.asarray(patchify(plain["images"][:, 0], P)[0])
  found = 0
  for r in range(3):
    for s in np.flatnonzero(packed["example_mask"][r]):
      enc = packed["encoder_segment_ids"][r] == s + 1
      index = packed["encoder_visual_index"][r][enc]
      prompt = packed["encoder_input_tokens"][r][enc][index < 0]
      target = packed["decoder_target_tokens"][r][packed["decoder_segment_ids"][r] == s + 1]
      pixels = packed["patches"][r][index[index >= 0]]
      matches = [i for i in range(20)
                 if np.array_equal(plain["encoder_input_tokens"][i][:len(prompt)], prompt)
                 and np.array_equal(plain["decoder_target_tokens"][i][:len(target)], target)
                 and np.allclose(patches[i], pixels, atol=1e-6)]
      assert matches, (r, s)
      found += 1
  assert found >= 9  # three rows of 3-4 easy-VQA examples


def test_packer_conserves_examples_and_counts_drops():
  """Every scheduled example is placed, carried once, or dropped (and named)."""
  rng = np.random.default_rng(0)
  image = lambda n: pe.ImageTokens(np.zeros((n, P * P * 3), np.float32), np.zeros(n, np.int32),
                                   np.zeros(n, np.int32), (1, n))
  windows = [[pe.PackedExample((image(int(rng.integers(4, 60))),), np.ones(5, np.int32),
                               np.ones(3, np.int32), task_name="t", record_id=f"t[{j * 10 + i}]")
              for i in range(10)] for j in range(6)]
  stats = pe.PackedStats()
  packer = pe.ExamplePacker(ROWS, 2, stats)
  carried, placed = [], []
  for window in windows:
    rows, carried_next = packer.step(window, carried)
    for row in rows:
      assert sum(e.encoder_length for e in row) <= ROWS.input_length
      placed += [e.record_id for e in row]
    assert packer.leftover(window) == carried_next  # what the next step carries: window alone
    carried = carried_next
  ids = [e.record_id for w in windows for e in w]
  leftover = [e.record_id for e in carried]
  assert len(placed) + stats.dropped + len(leftover) == len(ids) == 60
  assert len(set(placed)) == len(placed) and stats.dropped > 0
  assert stats.dropped_examples[0].startswith("task 't' example t[")
  assert 0.85 < stats.non_pad_fraction("encoder") <= 1.0


def test_an_example_too_long_for_the_encoder_is_named(mix):
  stream = pe.PackedStream(rows=pe.PackedRows(vit_length=112, vit_slots=8, input_length=64,
                                              target_length=24, examples_per_row=8,
                                              patch_size=P), examples_per_step=4, sides=SIDES,
                           separator_id=1027)
  with pytest.raises(pe.DataError, match=r"task 'moving_shapes_vqa' example MovingShapesSource:"
                                         r"train\[\d+\]: 96 visual tokens \+ \d+ prompt tokens = "
                                         r"\d+ exceed the packed encoder length 64"):
    next(packed_batches.get_packed_batches("moving_shapes_vqa", split="train", batch_size=2,
                                           stream=stream))


def test_stream_settings_are_checked(mix):
  with pytest.raises(ValueError, match="names 'easy_vqa_captions', which is not a registered"):
    next(packed_batches.get_packed_batches(
        mix, split="train", batch_size=2,
        stream=pe.PackedStream(rows=ROWS, sides={"easy_vqa_captions": 16})))
  with pytest.raises(ValueError, match="at least the patch size 8"):
    pe.PackedStream(rows=ROWS, sides={"easy_vqa": 4}).check()
  with pytest.raises(ValueError, match="training streams"):
    packed_batches.get_packed_batches(mix, split="train", batch_size=2, stream=_stream(),
                                      repeat=False)
