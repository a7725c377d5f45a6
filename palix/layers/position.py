"""Position embeddings for patch tokens.

Every kind takes the patch grid coordinates ``(ys, xs)`` (int ``[B, N]``) and the grid shape
``(gh, gw)`` of the image they came from, and returns ``[B, N, width]`` (or something that
broadcasts to it). Passing coordinates rather than assuming a full grid is what lets packed,
token-dropped NaViT sequences reuse the same layers.
"""

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class LearnedPosEmb(nn.Module):
  """A learned table for a ``grid x grid`` layout (1-D, ViT style), resized for other grids.

  The table is stored for the training resolution (``grid``) and bilinearly interpolated when the
  image gives a different patch grid, as ViT fine-tuning at a higher resolution does.
  """
  grid: Tuple[int, int] = (14, 14)
  width: int = 0
  stddev: float = 0.02
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ys, xs, grid_shape):
    gh0, gw0 = self.grid
    table = self.param("pos_embedding",
                       nn.with_logical_partitioning(nn.initializers.normal(self.stddev),
                                                    ("length", "embed")),
                       (gh0 * gw0, self.width), self.param_dtype)
    gh, gw = grid_shape
    if (gh, gw) != (gh0, gw0):
      grid_table = table.reshape(gh0, gw0, -1)
      grid_table = jax.image.resize(grid_table, (gh, gw, grid_table.shape[-1]), method="bilinear")
      table = grid_table.reshape(gh * gw, -1)
    return jnp.take(table, ys * gw + xs, axis=0)


def sincos_2d_table(gh, gw, width, temperature=10_000.0):
  """Fixed 2-D sine-cosine embedding ``[gh*gw, width]`` (MoCo v3 / big_vision layout)."""
  if width % 4:
    raise ValueError(f"sincos_2d position embedding needs a width divisible by 4, got {width}")
  y, x = np.mgrid[:gh, :gw]
  omega = np.arange(width // 4) / (width // 4 - 1 if width > 4 else 1)
  omega = 1.0 / (temperature ** omega)
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class SinCos2DPosEmb(nn.Module):
  """Fixed 2-D sine-cosine embedding computed for whatever grid the image gives (no parameters)."""
  width: int = 0

  def __call__(self, ys, xs, grid_shape):
    gh, gw = grid_shape
    table = jnp.asarray(sincos_2d_table(gh, gw, self.width))
    return jnp.take(table, ys * gw + xs, axis=0)


class FactorizedPosEmb(nn.Module):
  """NaViT's factorized embedding: ``phi_y[y] + phi_x[x]``, learned tables indexed by coordinates.

  ``max_grid`` bounds the patch index along each side; no interpolation is needed for new
  resolutions or aspect ratios.
  """
  max_grid: int = 64
  width: int = 0
  stddev: float = 0.02
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ys, xs, grid_shape):
    gh, gw = grid_shape
    if max(gh, gw) > self.max_grid:
      raise ValueError(
          f"FactorizedPosEmb: patch grid {gh}x{gw} exceeds max_grid={self.max_grid}; "
          "raise ViTConfig.posemb_max_grid")
    init = nn.with_logical_partitioning(nn.initializers.normal(self.stddev), ("length", "embed"))
    table_y = self.param("pos_embedding_y", init, (self.max_grid, self.width), self.param_dtype)
    table_x = self.param("pos_embedding_x", init, (self.max_grid, self.width), self.param_dtype)
    return jnp.take(table_y, ys, axis=0) + jnp.take(table_x, xs, axis=0)
