"""T5 relative position buckets and bias against Hugging Face's PyTorch implementation."""

import numpy as np
import pytest

from palix.layers.relative_position import (RelativePositionBias, log_bucket_thresholds,
                                            relative_position_bucket)

torch = pytest.importorskip("torch")
hf_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (64, 256), (8, 32),
                                                      (32, 512), (128, 128)])
def test_buckets_match_hf(bidirectional, num_buckets, max_distance):
  rel = np.arange(-3 * max_distance, 3 * max_distance + 1)
  ours = np.asarray(relative_position_bucket(rel, bidirectional=bidirectional,
                                             num_buckets=num_buckets, max_distance=max_distance))
  theirs = hf_t5.T5Attention._relative_position_bucket(
      torch.from_numpy(rel), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance).numpy()
  np.testing.assert_array_equal(ours, theirs)
  assert ours.min() == 0 and ours.max() == num_buckets - 1


def test_default_thresholds_are_exact_powers():
  # Bidirectional default: 8 exact buckets per side, then log buckets 8..15 for distances 8..128,
  # boundaries at 8 * 16 ** (j / 8) = 8 * 2 ** (j / 2): the even j land exactly on 16, 32, 64.
  t = log_bucket_thresholds(32, 128, True)
  assert t[1] == 16 and t[3] == 32 and t[5] == 64
  expected = [int(np.ceil(8 * 2 ** (j / 2) - 1e-9)) for j in range(1, 8)]
  assert list(t) == expected


@pytest.mark.parametrize("num_buckets,max_distance,bidirectional",
                         [(1, 100, False), (2, 100, True), (32, 8, True), (32, 16, False)])
def test_bad_configuration_raises(num_buckets, max_distance, bidirectional):
  with pytest.raises(ValueError, match="num_buckets|max_distance"):
    log_bucket_thresholds(num_buckets, max_distance, bidirectional)


def test_bias_module_gathers_table_per_head():
  import jax
  module = RelativePositionBias(num_buckets=32, max_distance=128, num_heads=3, bidirectional=True)
  q, k = np.arange(5), np.arange(7)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), q, k)["params"]
  assert shapes["rel_embedding"].value.shape == (32, 3)
  table = np.random.RandomState(0).randn(32, 3).astype(np.float32)
  bias = np.asarray(jax.jit(module.apply)({"params": {"rel_embedding": table}}, q, k))
  assert bias.shape == (1, 3, 5, 7)
  buckets = np.asarray(relative_position_bucket(k[None] - q[:, None], bidirectional=True))
  np.testing.assert_array_equal(bias[0], np.transpose(table[buckets], (2, 0, 1)))


def test_bias_module_takes_per_example_positions():
  import jax
  module = RelativePositionBias(num_buckets=16, max_distance=40, num_heads=2, bidirectional=False)
  table = {"rel_embedding": np.random.RandomState(1).randn(16, 2).astype(np.float32)}
  positions = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 30]])
  both = np.asarray(jax.jit(module.apply)({"params": table}, positions, positions))
  assert both.shape == (2, 2, 6, 6)
  for b in range(2):
    row = np.asarray(jax.jit(module.apply)({"params": table}, positions[b], positions[b]))
    np.testing.assert_array_equal(both[b], row[0])
