"""Position embeddings against explicit formulas, at the stored grid and at other grids."""

import math

import jax
import numpy as np
import pytest

from palix.layers.position import (FactorizedPosEmb, LearnedPosEmb, SinCos2DPosEmb,
                                   SinCosFactorizedPosEmb)


def coords(gh, gw, batch=2):
  ys, xs = np.divmod(np.arange(gh * gw), gw)
  return np.broadcast_to(ys, (batch, gh * gw)), np.broadcast_to(xs, (batch, gh * gw))


def np_bilinear(table, out_h, out_w):
  """Half-pixel-centre bilinear resize with edge clamping, one output cell at a time."""
  h, w, _ = table.shape
  out = np.zeros((out_h, out_w, table.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      u = min(max((i + 0.5) * h / out_h - 0.5, 0), h - 1)
      v = min(max((j + 0.5) * w / out_w - 0.5, 0), w - 1)
      i0, j0 = int(u), int(v)
      i1, j1, a, b = min(i0 + 1, h - 1), min(j0 + 1, w - 1), u - int(u), v - int(v)
      out[i, j] = ((1 - a) * (1 - b) * table[i0, j0] + (1 - a) * b * table[i0, j1]
                   + a * (1 - b) * table[i1, j0] + a * b * table[i1, j1])
  return out


def test_learned_at_stored_grid_is_the_table(random_params):
  emb = LearnedPosEmb(grid=(3, 4), width=8)
  ys, xs = coords(3, 4)
  params = random_params(emb, ys, xs, (3, 4))
  got = emb.apply({"params": params}, ys, xs, (3, 4))
  np.testing.assert_array_equal(got[0], params["pos_embedding"])
  # Coordinates, not positions, pick rows: a shuffled (token-dropped) order gathers the same rows.
  order = np.array([7, 0, 11, 5])
  got = emb.apply({"params": params}, ys[:, order], xs[:, order], (3, 4))
  np.testing.assert_array_equal(got[1], params["pos_embedding"][order])


@pytest.mark.parametrize("grid", [(6, 6), (8, 5), (4, 7)])
def test_learned_upsampled_is_bilinear(random_params, grid):
  emb = LearnedPosEmb(grid=(4, 4), width=8)
  params = random_params(emb, *coords(4, 4), (4, 4))
  got = jax.jit(emb.apply, static_argnums=3)({"params": params}, *coords(*grid), grid)[0]
  want = np_bilinear(params["pos_embedding"].reshape(4, 4, 8), *grid).reshape(-1, 8)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_sincos_matches_formula_at_two_grids():
  width = 16
  for gh, gw in ((2, 3), (5, 4)):
    got = SinCos2DPosEmb(width=width).apply({}, *coords(gh, gw), (gh, gw))[0]
    for index in range(gh * gw):
      y, x = divmod(index, gw)
      omega = [1 / 10000 ** (k / (width // 4 - 1)) for k in range(width // 4)]
      want = ([math.sin(x * o) for o in omega] + [math.cos(x * o) for o in omega]
              + [math.sin(y * o) for o in omega] + [math.cos(y * o) for o in omega])
      np.testing.assert_allclose(got[index], want, atol=1e-5)
  with pytest.raises(ValueError, match="divisible by 4, got 10"):
    SinCos2DPosEmb(width=10).apply({}, *coords(2, 2), (2, 2))


def test_factorized_sums_row_and_column_tables(random_params):
  emb = FactorizedPosEmb(max_grid=8, width=8)
  params = random_params(emb, *coords(3, 5), (3, 5))
  for grid in ((3, 5), (7, 2)):
    ys, xs = coords(*grid)
    got = emb.apply({"params": params}, ys, xs, grid)[0]
    want = params["pos_embedding_y"][ys[0]] + params["pos_embedding_x"][xs[0]]
    np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="patch grid 9x2 exceeds max_grid=8"):
    jax.eval_shape(lambda: emb.apply({"params": params}, *coords(9, 2), (9, 2)))


def np_interpolate(table, position):
  position = min(max(position, 0.0), len(table) - 1)
  low = int(np.floor(position))
  high = min(low + 1, len(table) - 1)
  return table[low] * (1 - (position - low)) + table[high] * (position - low)


def test_fractional_factorized_interpolates_at_the_patch_centre_fraction(random_params):
  emb = FactorizedPosEmb(max_grid=8, width=6, fractional=True)
  params = random_params(emb, *coords(3, 5), (3, 5))
  ys, xs = coords(3, 5)
  got = jax.jit(emb.apply, static_argnums=3)({"params": params}, ys, xs, (3, 5))[0]
  for index in range(15):
    y, x = divmod(index, 5)
    want = (np_interpolate(params["pos_embedding_y"], (y + 0.5) / 3 * 8 - 0.5)
            + np_interpolate(params["pos_embedding_x"], (x + 0.5) / 5 * 8 - 0.5))
    np.testing.assert_allclose(got[index], want, atol=1e-6)
  # At the full grid the fractional position is the absolute index.
  absolute = FactorizedPosEmb(max_grid=8, width=6)
  full = coords(8, 8)
  np.testing.assert_allclose(emb.apply({"params": params}, *full, (8, 8)),
                             absolute.apply({"params": params}, *full, (8, 8)), atol=1e-6)
  # The middle row of a 3-row and of a 5-row image is the same fraction: the same embedding.
  middle = [emb.apply({"params": params}, np.array([[y]]), np.array([[0]]), (g, 4))
            for y, g in ((1, 3), (2, 5))]
  np.testing.assert_allclose(middle[0], middle[1], atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: FactorizedPosEmb(max_grid=8, width=8),
    lambda: FactorizedPosEmb(max_grid=8, width=8, fractional=True),
    lambda: SinCosFactorizedPosEmb(width=8),
    lambda: SinCosFactorizedPosEmb(width=8, fractional=True, max_grid=8),
    lambda: SinCos2DPosEmb(width=8, max_grid=8)])
def test_per_token_grids_equal_static_grids(random_params, make):
  """Packed sequences pass each token's own grid as arrays: two images of different grids in one
  row get what each gets with its grid given statically."""
  emb = make()
  params = random_params(emb, *coords(2, 3), (2, 3))
  apply = lambda *args: emb.apply({"params": params}, *args)
  (ya, xa), (yb, xb) = coords(2, 3, batch=1), coords(4, 1, batch=1)
  ys, xs = np.concatenate([ya, yb], 1), np.concatenate([xa, xb], 1)
  gh = np.array([[2] * 6 + [4] * 4])
  gw = np.array([[3] * 6 + [1] * 4])
  got = jax.jit(apply)(ys, xs, (gh, gw))
  np.testing.assert_allclose(got[0, :6], apply(ya, xa, (2, 3))[0], atol=1e-6)
  np.testing.assert_allclose(got[0, 6:], apply(yb, xb, (4, 1))[0], atol=1e-6)


def test_sincos_factorized_is_y_then_x_halves_of_the_1d_formula():
  width = 16
  ys, xs = coords(3, 4)
  got = SinCosFactorizedPosEmb(width=width).apply({}, ys, xs, (3, 4))[0]
  omega = [1 / 10000 ** (k / (width // 4 - 1)) for k in range(width // 4)]
  for index in range(12):
    y, x = divmod(index, 4)
    want = ([math.sin(y * o) for o in omega] + [math.cos(y * o) for o in omega]
            + [math.sin(x * o) for o in omega] + [math.cos(x * o) for o in omega])
    np.testing.assert_allclose(got[index], want, atol=1e-5)
  # (y, x) and (x, y) differ (a plain sum of identical phi_y and phi_x would not).
  assert np.abs(np.asarray(got[1] - got[4])).max() > 0.1  # (0, 1) vs (1, 0)
  fractional = SinCosFactorizedPosEmb(width=width, fractional=True, max_grid=6)
  np.testing.assert_allclose(fractional.apply({}, *coords(6, 6), (6, 6)),
                             SinCosFactorizedPosEmb(width=width).apply({}, *coords(6, 6), (6, 6)),
                             atol=1e-5)
  with pytest.raises(ValueError, match="divisible by 4, got 10"):
    SinCosFactorizedPosEmb(width=10).apply({}, ys, xs, (3, 4))


def test_learned_table_refuses_per_token_grids(random_params):
  emb = LearnedPosEmb(grid=(2, 2), width=4)
  params = random_params(emb, *coords(2, 2), (2, 2))
  ys, xs = coords(2, 2)
  with pytest.raises(ValueError, match="LearnedPosEmb resizes its table to one image grid"):
    emb.apply({"params": params}, ys, xs, (np.full_like(ys, 2), np.full_like(xs, 2)))
