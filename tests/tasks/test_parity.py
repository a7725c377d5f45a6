"""The parity batch source: labels, the length mix, determinism, exact resumption, sharding and
bad settings."""

import itertools

import numpy as np
import pytest

from palix.tasks.sources.parity import ONE, PAD, ZERO, parity_batches

LENGTHS = {"inputs": 12}


def batches(n, **kw):
  kw = {"split": "train", "batch_size": 8, "feature_lengths": LENGTHS, "lengths": (3, 8, 12),
        **kw}
  return list(itertools.islice(parity_batches("parity", **kw), n))


def test_labels_are_the_parity_of_the_one_bits_and_padding_follows_the_sequence():
  for b in batches(20, weights=(1, 2, 1)):
    inputs, labels = b["inputs"], b["labels"]
    assert inputs.dtype == np.int32 and labels.dtype == np.int32 and inputs.shape == (8, 12)
    for row, label in zip(inputs, labels):
      length = int((row != PAD).sum())
      assert length in (3, 8, 12)
      assert (row[:length] != PAD).all() and (row[length:] == PAD).all()
      assert set(row[:length]) <= {ZERO, ONE}
      assert label == int((row == ONE).sum()) % 2


def test_length_mix_follows_the_weights():
  lengths = np.concatenate([(b["inputs"] != PAD).sum(1) for b in batches(300, weights=(1, 2, 1))])
  share = [np.mean(lengths == n) for n in (3, 8, 12)]
  # 2400 draws: the standard error of each share is below 0.011.
  np.testing.assert_allclose(share, [0.25, 0.5, 0.25], atol=0.04)
  ones = np.concatenate([b["inputs"] == ONE for b in batches(100)]).sum()
  bits = np.concatenate([b["inputs"] != PAD for b in batches(100)]).sum()
  assert abs(ones / bits - 0.5) < 0.03
  labels = np.concatenate([b["labels"] for b in batches(100)])
  assert abs(labels.mean() - 0.5) < 0.06


def test_deterministic_resumable_and_sharded():
  full = batches(6, seed=3)
  again = batches(6, seed=3)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  resumed = batches(2, seed=3, start_step=4)
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  # Two shards of 4 rows each make the same global batch as one shard of 8.
  shards = [batches(6, seed=3, batch_size=4, num_shards=2, shard_index=i) for i in (0, 1)]
  for step in range(6):
    np.testing.assert_array_equal(
        np.concatenate([shards[0][step]["inputs"], shards[1][step]["inputs"]]),
        full[step]["inputs"])
  other_seed = batches(1, seed=4)[0]["inputs"]
  assert not np.array_equal(other_seed, full[0]["inputs"])


def test_evaluation_split_is_finite_and_independent_of_the_seed():
  kw = dict(split="test", repeat=False, num_examples=32)
  a, b = batches(100, seed=0, **kw), batches(100, seed=7, **kw)
  assert len(a) == 4
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
  train = np.concatenate([x["inputs"] for x in batches(4, seed=0)])
  assert not np.array_equal(np.concatenate([x["inputs"] for x in a]), train)


@pytest.mark.parametrize("kw,message", [
    (dict(lengths=(3, 13)), r"lengths has 13 but feature_lengths\['inputs'\] .* is 12"),
    (dict(lengths=(0, 4)), r"parity_batches.lengths = \(0, 4\): need positive integers"),
    (dict(weights=(1, 1)), r"parity_batches.weights = \(1, 1\): need one non-negative weight "
                           r"per length \(3, 8, 12\)"),
    (dict(weights=(0, 0, 0)), r"not all zero"),
    (dict(split="test", repeat=False, num_examples=30),
     r"num_examples = 30 is not a multiple of the global batch size 8"),
    (dict(feature_lengths={"targets": 4}), r"lacks 'inputs'"),
])
def test_bad_settings_raise_clear_errors(kw, message):
  with pytest.raises(ValueError, match=message):
    batches(1, **kw)
  with pytest.raises(ValueError, match="only provides 'parity', not 'other'"):
    next(parity_batches("other", split="train", batch_size=2, feature_lengths=LENGTHS))
