"""Pooling heads ignore padded tokens: outputs equal those computed without the padding."""

import jax
import numpy as np

from palix.layers.mlp import gelu_exact
from palix.layers.pooling import GlobalAveragePool, MAPHead, NoPool


def tokens_and_mask():
  tokens = np.random.RandomState(0).standard_normal((2, 6, 16)).astype(np.float32)
  valid = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  padded = tokens.copy()
  padded[0, 3:] = 1e3  # garbage where the mask says padding
  return tokens, padded, valid


def test_gap_is_the_mean_of_real_tokens():
  tokens, padded, valid = tokens_and_mask()
  got = GlobalAveragePool().apply({}, padded, valid)
  np.testing.assert_allclose(got[0], tokens[0, :3].mean(0), atol=1e-6)
  np.testing.assert_allclose(got[1], tokens[1].mean(0), atol=1e-6)
  empty = GlobalAveragePool().apply({}, padded, np.zeros_like(valid))
  np.testing.assert_array_equal(empty, 0)  # an all-padding row gives zeros, not NaN


def test_map_head_ignores_padding(random_params):
  tokens, padded, valid = tokens_and_mask()
  head = MAPHead(num_heads=4, mlp_dim=32, activation=gelu_exact)
  params = random_params(head, tokens, valid)
  apply = jax.jit(head.apply)
  got = apply({"params": params}, padded, valid)
  assert got.shape == (2, 16)
  alone = apply({"params": params}, tokens[:1, :3], valid[:1, :3])
  np.testing.assert_allclose(got[0], alone[0], atol=1e-5)
  unchanged = apply({"params": params}, tokens, valid)
  np.testing.assert_allclose(got, unchanged, atol=1e-5)
  # The head does depend on the real tokens (the test above could not pass by ignoring them).
  moved = apply({"params": params}, tokens + 1, valid)
  assert np.abs(np.asarray(moved - unchanged)).max() > 1e-2


def test_no_pool_returns_every_token():
  tokens, padded, valid = tokens_and_mask()
  np.testing.assert_array_equal(NoPool().apply({}, padded, valid), padded)


def packed_tokens():
  """Row 0 holds image 1 (tokens 0-2) and image 2 (tokens 3-4), then padding; row 1 holds image 1
  only and leaves slot 2 empty."""
  tokens = np.random.RandomState(1).standard_normal((2, 6, 16)).astype(np.float32)
  ids = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 0, 0, 0, 0]])
  valid = ids[:, None, :] == np.arange(1, 3)[None, :, None]  # [B, K=2, L]
  return tokens, ids, valid


def test_gap_per_slot_is_each_images_mean():
  tokens, ids, valid = packed_tokens()
  got = GlobalAveragePool().apply({}, tokens, valid)
  assert got.shape == (2, 2, 16)
  np.testing.assert_allclose(got[0, 0], tokens[0, :3].mean(0), atol=1e-6)
  np.testing.assert_allclose(got[0, 1], tokens[0, 3:5].mean(0), atol=1e-6)
  np.testing.assert_allclose(got[1, 0], tokens[1, :2].mean(0), atol=1e-6)
  np.testing.assert_array_equal(got[1, 1], 0)  # the empty slot


def test_map_head_per_slot_equals_each_image_pooled_alone(random_params):
  tokens, ids, valid = packed_tokens()
  head = MAPHead(num_heads=4, mlp_dim=32, activation=gelu_exact)
  params = random_params(head, tokens, ids > 0)
  apply = jax.jit(head.apply)
  got = apply({"params": params}, tokens, valid)
  assert got.shape == (2, 2, 16)
  for (row, slot), span in {(0, 0): slice(0, 3), (0, 1): slice(3, 5), (1, 0): slice(0, 2)}.items():
    alone = apply({"params": params}, tokens[row:row + 1, span],
                  np.ones((1, span.stop - span.start), bool))
    np.testing.assert_allclose(got[row, slot], alone[0], atol=1e-5)
  np.testing.assert_array_equal(got[1, 1], 0)  # the empty slot is masked, not garbage
