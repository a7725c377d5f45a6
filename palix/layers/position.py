"""Position embeddings for patch tokens.

Every kind takes the patch grid coordinates ``(ys, xs)`` (int ``[B, N]``) and the grid shape
``(gh, gw)`` of the image they came from, and returns ``[B, N, width]`` (or something that
broadcasts to it). Passing coordinates rather than assuming a full grid is what lets packed,
token-dropped NaViT sequences reuse the same layers.

The grid shape is two Python ints (one image size for the whole batch) or, for packed sequences
where every token may come from an image of another size, two int arrays ``[B, N]`` (each
token's own image grid). ``LearnedPosEmb`` resizes a table to the grid, so it needs the ints;
the others accept both. In the NaViT family (Dehghani et al. 2023) ``phi_y + phi_x`` is indexed
by *absolute* patch indices or by *fractional* ones (the position relative to the image side,
the same for every resolution): ``FactorizedPosEmb`` (learned tables) and
``SinCosFactorizedPosEmb`` (fixed), each with ``fractional`` on or off.
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
    if not _static_grid(grid_shape):
      raise ValueError("LearnedPosEmb resizes its table to one image grid; packed sequences of "
                       "images of several sizes need FactorizedPosEmb, SinCosFactorizedPosEmb or "
                       "SinCos2DPosEmb (ViTConfig.posemb)")
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
  """Fixed 2-D sine-cosine embedding computed for whatever grid the image gives (no parameters).

  The value at ``(y, x)`` does not depend on the grid, so per-token grids (packed sequences)
  read one ``max_grid x max_grid`` table.
  """
  width: int = 0
  max_grid: int = 64

  def __call__(self, ys, xs, grid_shape):
    gh, gw = grid_shape
    if not _static_grid(grid_shape):
      gh = gw = self.max_grid
    table = jnp.asarray(sincos_2d_table(gh, gw, self.width))
    return jnp.take(table, ys * gw + xs, axis=0)


def _static_grid(grid_shape) -> bool:
  return all(isinstance(side, (int, np.integer)) for side in grid_shape)


def _check_grid(name: str, grid_shape, max_grid: int) -> None:
  if _static_grid(grid_shape) and max(grid_shape) > max_grid:
    raise ValueError(f"{name}: patch grid {grid_shape[0]}x{grid_shape[1]} exceeds "
                     f"max_grid={max_grid}; raise ViTConfig.posemb_max_grid")


def fractional_position(index, side, max_grid: int):
  """A patch's centre as a fraction of its image side, on a ``max_grid``-cell scale.

  ``(index + 0.5) / side * max_grid - 0.5``: equal to ``index`` when ``side == max_grid``, and
  the same fraction of the image maps to the same position at every resolution.
  """
  side = jnp.maximum(jnp.asarray(side, jnp.float32), 1.0)
  return (jnp.asarray(index, jnp.float32) + 0.5) / side * max_grid - 0.5


def _interpolate_rows(table, position):
  """Rows of ``table`` at fractional ``position`` (linear between neighbours, clamped)."""
  position = jnp.clip(position, 0.0, table.shape[0] - 1)
  low = jnp.floor(position)
  weight = (position - low)[..., None].astype(table.dtype)
  low = low.astype(jnp.int32)
  high = jnp.minimum(low + 1, table.shape[0] - 1)
  return jnp.take(table, low, axis=0) * (1 - weight) + jnp.take(table, high, axis=0) * weight


class FactorizedPosEmb(nn.Module):
  """NaViT's factorized embedding ``phi_y(y) + phi_x(x)`` from two learned tables.

  Absolute (``fractional=False``): rows ``y`` and ``x`` of tables of ``max_grid`` rows; no
  interpolation is needed for new resolutions or aspect ratios, and an index of ``max_grid`` or
  more is out of the table (a static grid that large is an error; per-token coordinates that
  large give NaN, which stops training at that step). Fractional: the rows at
  :func:`fractional_position` (linear interpolation between rows), so an image keeps its
  embedding pattern at any resolution.
  """
  max_grid: int = 64
  width: int = 0
  fractional: bool = False
  stddev: float = 0.02
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ys, xs, grid_shape):
    _check_grid("FactorizedPosEmb", grid_shape, self.max_grid)
    init = nn.with_logical_partitioning(nn.initializers.normal(self.stddev), ("length", "embed"))
    table_y = self.param("pos_embedding_y", init, (self.max_grid, self.width), self.param_dtype)
    table_x = self.param("pos_embedding_x", init, (self.max_grid, self.width), self.param_dtype)
    if not self.fractional:
      return (jnp.take(table_y, ys, axis=0, mode="fill")
              + jnp.take(table_x, xs, axis=0, mode="fill"))
    gh, gw = grid_shape
    return (_interpolate_rows(table_y, fractional_position(ys, gh, self.max_grid))
            + _interpolate_rows(table_x, fractional_position(xs, gw, self.max_grid)))


def sincos_1d(position, channels: int, temperature: float = 10_000.0):
  """``[..., channels]``: ``sin(position * w_k)`` then ``cos(position * w_k)``, with
  ``w_k = temperature ** (-k / (channels/2 - 1))`` for ``k < channels/2`` (as in the 2-D table)."""
  half = channels // 2
  omega = 1.0 / (temperature ** (np.arange(half) / (half - 1 if half > 1 else 1)))
  angle = jnp.asarray(position, jnp.float32)[..., None] * jnp.asarray(omega, jnp.float32)
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class SinCosFactorizedPosEmb(nn.Module):
  """Fixed factorized embedding: ``phi_y(y) + phi_x(x)`` with sine-cosine ``phi`` (no parameters).

  ``phi_y`` fills the first half of the width and ``phi_x`` the second (each zero in the other
  half), so the sum is a concatenation and ``(y, x)`` never collides with ``(x, y)``. Positions
  are absolute patch indices or, with ``fractional``, :func:`fractional_position` on a
  ``max_grid`` scale. The width must be divisible by 4.
  """
  width: int = 0
  fractional: bool = False
  max_grid: int = 64
  temperature: float = 10_000.0

  def __call__(self, ys, xs, grid_shape):
    if self.width % 4:
      raise ValueError(f"SinCosFactorizedPosEmb needs a width divisible by 4, got {self.width}")
    if self.fractional:
      gh, gw = grid_shape
      ys = fractional_position(ys, gh, self.max_grid)
      xs = fractional_position(xs, gw, self.max_grid)
    half = self.width // 2
    return jnp.concatenate([sincos_1d(ys, half, self.temperature),
                            sincos_1d(xs, half, self.temperature)], axis=-1)
