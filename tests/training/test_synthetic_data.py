"""The in-memory task: the batch-source contract (determinism, resume, shards) and its rule."""

import itertools

import numpy as np
import pytest

from palix.training import synthetic_data as sd

FEATURES = {"inputs": 4, "targets": 3}


def _batches(n, **kwargs):
  kwargs.setdefault("split", "train")
  kwargs.setdefault("feature_lengths", FEATURES)
  return list(itertools.islice(sd.synthetic_batches(**kwargs), n))


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_start_step_resumes_exactly_across_epochs():
  run = _batches(7, batch_size=4, num_examples=10, seed=3)
  for k in (0, 2, 5):
    _equal(_batches(1, batch_size=4, num_examples=10, seed=3, start_step=k)[0], run[k])
  # Each epoch is a permutation of the 10 examples: rows 0..9 and 10..19 cover every example.
  prompts = np.concatenate([b["encoder_input_tokens"][:, 0] for b in run])
  images = np.concatenate([b["images"][:, 0, 0, 0, 0] for b in run])
  first, second = set(zip(prompts[:10], images[:10])), set(zip(prompts[10:20], images[10:20]))
  assert first == second and len(first) == 10


def test_shards_tile_the_global_batch():
  whole = _batches(3, batch_size=6)
  shards = [_batches(3, batch_size=2, shard_index=i, num_shards=3) for i in range(3)]
  for step in range(3):
    _equal({k: np.concatenate([s[step][k] for s in shards]) for k in whole[step]}, whole[step])


def test_targets_follow_the_rule_and_the_batch_layout():
  batch = _batches(1, batch_size=32, num_images=2, image_size=8)[0]
  assert batch["images"].shape == (32, 2, 8, 8, 3) and batch["images"].dtype == np.float32
  assert np.all(np.abs(batch["images"]) <= 1)
  levels = np.rint((batch["images"].mean(axis=(1, 2, 3, 4)) + 0.75) / 0.5).astype(int)
  prompts = batch["encoder_input_tokens"][:, 0] - sd.FIRST_PROMPT_ID
  want = [sd.answer_token(c, p) for c, p in zip(levels, prompts)]
  np.testing.assert_array_equal(batch["decoder_target_tokens"][:, 0], want)
  np.testing.assert_array_equal(batch["decoder_target_tokens"][:, 1], 1)  # EOS
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                batch["decoder_target_tokens"][:, :-1])
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], 0)
  np.testing.assert_array_equal(batch["decoder_loss_weights"],
                                (batch["decoder_target_tokens"] > 0).astype(np.float32))
  assert batch["decoder_target_tokens"].max() < sd.VOCAB_SIZE


def test_one_pass_without_repeat_pads_the_last_batch_with_zero_rows():
  shards = [list(sd.synthetic_batches(split="validation", batch_size=5, feature_lengths=FEATURES,
                                      repeat=False, shuffle=False, num_examples=12,
                                      shard_index=i, num_shards=2)) for i in range(2)]
  assert [len(s) for s in shards] == [2, 2]  # both shards yield the same number of batches
  assert all(len(b["images"]) == 5 for s in shards for b in s)
  real = [b["image_mask"][:, 0] for b in (shards[0][0], shards[1][0], shards[0][1], shards[1][1])]
  np.testing.assert_array_equal(np.concatenate(real), [1] * 12 + [0] * 8)
  last = shards[1][1]
  assert not last["images"].any() and not last["decoder_loss_weights"].any()


def test_bad_requests():
  with pytest.raises(ValueError, match="only provides 'synthetic_brightness'"):
    _batches(1, mixture_or_task_name="coco", batch_size=1)
  with pytest.raises(ValueError, match="lacks \\['targets'\\]"):
    _batches(1, batch_size=1, feature_lengths={"inputs": 3})
