"""Sparsity structures: which entries of one tensor a mask keeps, by magnitude.

* ``Unstructured()``: the largest-magnitude ``(1 − s)`` share of the tensor (one threshold per
  tensor, the paper's "uniform" distribution).
* ``NM(n, m, axis)``: along ``axis``, every group of ``m`` consecutive entries keeps its ``n``
  largest. The target sparsity is ``1 − n/m`` and is reached at the schedule's first update.
  The default ``axis=0`` is the contracted (input) axis of a Flax ``Dense`` kernel
  ``[in, out]``, which is the axis sparse tensor cores group (2:4 on NVIDIA Ampere and later).
* ``IterativeNM(n, m, axis)``: reaches ``n:m`` gradually (papers.md §2.1): at each update the
  current ``n:m`` choice is protected and the rest is pruned unstructured at the schedule's
  sparsity; at the schedule's end the mask is exactly ``n:m``.

Masks never regrow: an entry pruned at one update scores below every kept entry at the next.
Ties are broken by position (stable sorts), so a mask is the same on any device layout.
"""

import dataclasses

import gin
import jax.numpy as jnp


def _ranks_descending(scores):
  """Rank of each entry of a 1-D array when sorted by decreasing score (0 = largest); stable."""
  order = jnp.argsort(-scores, stable=True)
  return jnp.zeros(scores.shape, jnp.int32).at[order].set(jnp.arange(scores.size, dtype=jnp.int32))


def keep_largest(scores, sparsity):
  """Bool mask keeping the ``size − round(sparsity · size)`` largest ``scores``."""
  flat = scores.reshape(-1).astype(jnp.float32)
  num_keep = flat.size - jnp.round(jnp.asarray(sparsity, jnp.float32) * flat.size).astype(jnp.int32)
  return (_ranks_descending(flat) < num_keep).reshape(scores.shape)


def _scores(weights, old_mask):
  """Magnitudes; entries already pruned score -1, below any kept one (no regrowth)."""
  return jnp.where(old_mask, jnp.abs(weights).astype(jnp.float32), -1.0)


def _check_nm(n: int, m: int, what: str):
  if not (isinstance(n, int) and isinstance(m, int)) or n < 1 or m < 1:
    raise ValueError(f"{what}: n and m must be positive integers; got n={n!r}, m={m!r}")
  if n > m:
    raise ValueError(f"{what}: n={n} > m={m}; an n:m pattern keeps n of every m entries")


def nm_mask(scores, n: int, m: int, axis: int):
  """Bool mask keeping the ``n`` largest ``scores`` of each group of ``m`` along ``axis``."""
  moved = jnp.moveaxis(scores, axis, -1)
  groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  order = jnp.argsort(-groups, axis=-1, stable=True)
  ranks = jnp.argsort(order, axis=-1, stable=True)  # rank of each entry in its group
  keep = (ranks < n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis)


@gin.configurable(module="palix.sparsity")
@dataclasses.dataclass(frozen=True)
class Unstructured:
  """Per-tensor magnitude pruning to the schedule's sparsity."""

  def target_sparsity(self, requested):
    return requested

  def check(self, path: str, shape) -> None:
    del path, shape

  def mask(self, weights, old_mask, sparsity):
    return keep_largest(_scores(weights, old_mask), sparsity)


@gin.configurable(module="palix.sparsity")
@dataclasses.dataclass(frozen=True)
class NM:
  """``n`` of every ``m`` consecutive entries along ``axis`` survive (e.g. 2:4)."""
  n: int = 2
  m: int = 4
  axis: int = 0

  def __post_init__(self):
    _check_nm(self.n, self.m, f"{type(self).__name__}({self.n}:{self.m})")

  @property
  def name(self) -> str:
    return f"{type(self).__name__}({self.n}:{self.m}, axis={self.axis})"

  def target_sparsity(self, requested):
    implied = 1.0 - self.n / self.m
    if requested is not None and abs(requested - implied) > 1e-9:
      raise ValueError(f"Pruning.sparsity = {requested} contradicts {self.name}, whose sparsity "
                       f"is 1 - n/m = {implied:g}; leave Pruning.sparsity unset")
    return implied

  def check(self, path: str, shape) -> None:
    ndim = len(shape)
    if not -ndim <= self.axis < ndim:
      raise ValueError(f"{self.name}: parameter {path!r} has shape {tuple(shape)}, which has no "
                       f"axis {self.axis}")
    size = shape[self.axis]
    if size % self.m:
      raise ValueError(f"{self.name}: parameter {path!r} has shape {tuple(shape)}; axis "
                       f"{self.axis} (size {size}) is not divisible by m={self.m}. Exclude it "
                       "with Pruning.exclude or choose another axis")

  def mask(self, weights, old_mask, sparsity):
    del sparsity  # always exactly n:m
    return nm_mask(_scores(weights, old_mask), self.n, self.m, self.axis)


@gin.configurable(module="palix.sparsity")
@dataclasses.dataclass(frozen=True)
class IterativeNM(NM):
  """GMP towards ``n:m``: the current ``n:m`` choice is protected while sparsity ramps up."""

  def mask(self, weights, old_mask, sparsity):
    scores = _scores(weights, old_mask)
    protected = nm_mask(scores, self.n, self.m, self.axis)
    boosted = jnp.where(protected, jnp.max(scores) + 1.0, scores)
    return keep_largest(boosted, sparsity)
