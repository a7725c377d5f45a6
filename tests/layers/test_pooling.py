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
