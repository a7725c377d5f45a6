"""Box arithmetic, GIoU against an independent reference, and Hungarian matching vs brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.models import box_ops
from palix.models import matching

GRID = 64  # boxes on a 1/64 grid, so pixel counting is exact


def _raster(box):
  """Boolean [GRID, GRID] mask of a yxyx box whose corners lie on the grid."""
  ymin, xmin, ymax, xmax = (int(round(c * GRID)) for c in box)
  mask = np.zeros((GRID, GRID), bool)
  mask[ymin:ymax, xmin:xmax] = True
  return mask


def _giou_by_counting(a, b):
  """GIoU from areas counted on pixels (intersection, union) and the enclosing box's area."""
  ma, mb = _raster(a), _raster(b)
  inter, union = np.sum(ma & mb), np.sum(ma | mb)
  enclosing = ((max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
               * GRID * GRID)
  return inter / union - (enclosing - union) / enclosing


def _random_grid_boxes(rng, n):
  corners = rng.integers(0, GRID + 1, size=(n, 2, 2))
  lo, hi = corners.min(axis=1), corners.max(axis=1)
  hi = np.maximum(hi, lo + 1)  # at least one pixel
  hi = np.minimum(hi, GRID)
  lo = np.minimum(lo, hi - 1)
  return np.concatenate([lo, hi], axis=1).astype(np.float64) / GRID  # (ymin, xmin, ymax, xmax)


def test_giou_matches_pixel_counting_on_random_boxes():
  rng = np.random.default_rng(0)
  a, b = _random_grid_boxes(rng, 200), _random_grid_boxes(rng, 200)
  ours = np.asarray(box_ops.generalized_iou(jnp.asarray(a, jnp.float32),
                                            jnp.asarray(b, jnp.float32)))
  reference = np.array([_giou_by_counting(x, y) for x, y in zip(a, b)])
  np.testing.assert_allclose(ours, reference, atol=1e-5)
  assert (reference < 0).any() and (reference > 0.3).any()  # both regimes were exercised


def test_giou_and_iou_hand_computed():
  a = jnp.array([0.0, 0.0, 0.2, 0.2])
  b = jnp.array([0.1, 0.1, 0.3, 0.3])  # intersection 1, union 7, enclosing 9 (units of 0.01)
  np.testing.assert_allclose(box_ops.iou(a, b), 1 / 7, rtol=1e-5)
  np.testing.assert_allclose(box_ops.generalized_iou(a, b), 1 / 7 - 2 / 9, rtol=1e-5)
  np.testing.assert_allclose(box_ops.generalized_iou(a, a), 1.0, rtol=1e-6)
  far = jnp.array([0.8, 0.8, 1.0, 1.0])  # disjoint: GIoU = -(C - U) / C = -(1 - 0.08) / 1
  np.testing.assert_allclose(box_ops.generalized_iou(a, far), -(1.0 - 0.08), rtol=1e-5)


def test_pairwise_giou_and_box_format_round_trip():
  rng = np.random.default_rng(1)
  a, b = _random_grid_boxes(rng, 3), _random_grid_boxes(rng, 4)
  table = np.asarray(box_ops.pairwise_generalized_iou(jnp.asarray(a), jnp.asarray(b)))
  assert table.shape == (3, 4)
  for i, j in itertools.product(range(3), range(4)):
    np.testing.assert_allclose(table[i, j], _giou_by_counting(a[i], b[j]), atol=1e-5)
  round_trip = box_ops.cxcywh_to_yxyx(box_ops.yxyx_to_cxcywh(jnp.asarray(a, jnp.float32)))
  np.testing.assert_allclose(round_trip, a, atol=1e-6)
  np.testing.assert_allclose(box_ops.yxyx_to_cxcywh(jnp.array([0.1, 0.2, 0.5, 0.4])),
                             [0.3, 0.3, 0.2, 0.4], atol=1e-6)


def _brute_force_cost(cost, valid):
  columns = np.flatnonzero(valid)
  best = np.inf
  for tokens in itertools.permutations(range(cost.shape[0]), len(columns)):
    best = min(best, sum(cost[t, c] for t, c in zip(tokens, columns)))
  return best


@pytest.mark.parametrize("seed", range(6))
def test_hungarian_is_optimal_against_brute_force(seed):
  rng = np.random.default_rng(seed)
  batch, tokens, instances = 3, int(rng.integers(3, 7)), 4
  cost = rng.normal(size=(batch, tokens, instances))
  valid = rng.random((batch, instances)) < 0.7
  valid[0] = True  # a full row
  valid[1] = False  # an image without instances
  matched = matching.hungarian_numpy(cost, valid)
  for b in range(batch):
    assert np.all(matched[b][~valid[b]] == -1), "padded instances never match"
    used = matched[b][valid[b]]
    assert len(set(used.tolist())) == len(used) and np.all(used >= 0)
    total = sum(cost[b, t, m] for m, t in enumerate(matched[b]) if t >= 0)
    np.testing.assert_allclose(total, _brute_force_cost(cost[b], valid[b]) if valid[b].any()
                               else 0.0, rtol=1e-9, atol=1e-12)


def test_jitted_matching_equals_numpy_and_has_no_gradient():
  rng = np.random.default_rng(7)
  cost = rng.normal(size=(2, 5, 3)).astype(np.float32)
  valid = np.array([[True, True, False], [True, False, True]])
  jitted = jax.jit(matching.hungarian)(jnp.asarray(cost), jnp.asarray(valid))
  np.testing.assert_array_equal(jitted, matching.hungarian_numpy(cost, valid))
  # The callback sits under stop_gradient: differentiating through it is allowed and adds 0.
  grad = jax.grad(lambda c: jnp.sum(c) + jnp.sum(
      matching.hungarian(c, jnp.asarray(valid)).astype(jnp.float32)))(jnp.asarray(cost))
  np.testing.assert_allclose(grad, np.ones_like(cost))


def test_cost_matrix_terms_by_hand():
  logits = jnp.array([[[0.0, 2.0], [-1.0, 0.5]]])  # 2 tokens, 2 queries
  pred = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
  gt = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.2, 0.1, 0.1]]])
  labels = jnp.array([[1, 0]])
  cost = np.asarray(matching.cost_matrix(logits, pred, gt, labels, class_weight=0.0,
                                         l1_weight=1.0, giou_weight=0.0))
  np.testing.assert_allclose(cost[0, 0], [0.0, 0.25 + 0.3 + 0.1 + 0.1], atol=1e-6)
  focal = np.asarray(matching.cost_matrix(logits, pred, gt, labels, class_weight=1.0,
                                          l1_weight=0.0, giou_weight=0.0))
  p = 1 / (1 + np.exp(-2.0))  # token 0, query 1 (instance 0's label)
  expected = 0.3 * (1 - p) ** 2 * -np.log(p) - 0.7 * p ** 2 * -np.log(1 - p)
  np.testing.assert_allclose(focal[0, 0, 0], expected, rtol=1e-5)
