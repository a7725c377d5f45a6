"""Mask rules against numpy brute force: unstructured top-k, n:m groups, iterative n:m."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix import sparsity
from palix.sparsity import structures


def _weights(shape, seed=0):
  return np.array(jax.random.normal(jax.random.key(seed), shape))


@pytest.mark.parametrize("shape, axis, n, m", [((8, 16), 0, 2, 4), ((8, 16), 1, 4, 8),
                                               ((4, 3, 8), -1, 1, 4), ((4, 8, 6), 1, 3, 4)])
def test_nm_keeps_exactly_the_n_largest_of_every_group(shape, axis, n, m):
  w = _weights(shape, seed=n * 10 + m)
  mask = np.asarray(sparsity.NM(n, m, axis).mask(w, np.ones(shape, bool), None))
  moved_w, moved_m = np.moveaxis(w, axis, -1), np.moveaxis(mask, axis, -1)
  for index in itertools.product(*[range(s) for s in moved_w.shape[:-1]]):
    for g in range(moved_w.shape[-1] // m):
      group_w = np.abs(moved_w[index][g * m:(g + 1) * m])
      group_m = moved_m[index][g * m:(g + 1) * m]
      assert group_m.sum() == n
      expected = set(np.argsort(-group_w, kind="stable")[:n])
      assert set(np.flatnonzero(group_m)) == expected


def test_nm_ties_keep_exactly_n():
  w = np.ones((8, 4), np.float32)
  mask = np.asarray(sparsity.NM(2, 4, 0).mask(w, np.ones(w.shape, bool), None))
  assert (mask.reshape(2, 4, 4).sum(1) == 2).all()


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.875])
def test_unstructured_keeps_the_largest_magnitudes(s):
  w = _weights((16, 24), seed=3)
  mask = np.asarray(sparsity.Unstructured().mask(w, np.ones(w.shape, bool), s))
  num_keep = w.size - int(round(s * w.size))
  assert mask.sum() == num_keep
  threshold = np.sort(np.abs(w).ravel())[::-1][num_keep - 1]
  assert np.all(np.abs(w)[mask] >= threshold) and np.all(np.abs(w)[~mask] <= threshold)


def test_pruned_entries_never_regrow():
  w = _weights((8, 8), seed=4)
  old = np.ones(w.shape, bool)
  old[:, 0] = False  # pruned earlier; now give them the largest magnitudes
  w[:, 0] = 100.0
  mask = np.asarray(sparsity.Unstructured().mask(w, old, 0.5))
  assert not mask[:, 0].any() and mask.sum() == 32


def test_iterative_nm_protects_nm_and_ends_exactly_nm():
  w = _weights((16, 8), seed=5)
  structure = sparsity.IterativeNM(2, 4, axis=0)
  exact = np.asarray(sparsity.NM(2, 4, 0).mask(w, np.ones(w.shape, bool), None))
  partial = np.asarray(structure.mask(w, np.ones(w.shape, bool), 0.25))
  assert partial.sum() == w.size - int(round(0.25 * w.size))
  assert np.all(partial[exact])  # the n:m choice is protected while ramping up
  final = np.asarray(structure.mask(w, np.ones(w.shape, bool), structure.target_sparsity(None)))
  np.testing.assert_array_equal(final, exact)


def test_keep_largest_is_jittable_with_a_traced_sparsity():
  w = jnp.asarray(_weights((6, 10), seed=6))
  f = jax.jit(structures.keep_largest)
  assert int(f(jnp.abs(w), 0.5).sum()) == 30 and int(f(jnp.abs(w), 0.9).sum()) == 6


@pytest.mark.parametrize("make, message", [
    (lambda: sparsity.NM(5, 4), r"n=5 > m=4"),
    (lambda: sparsity.IterativeNM(0, 4), "positive integers"),
])
def test_bad_nm_is_rejected(make, message):
  with pytest.raises(ValueError, match=message):
    make()
