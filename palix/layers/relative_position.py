"""T5's bucketed relative position bias (Raffel et al. 2020), one table per attention stack.

A key at position ``k`` seen from a query at position ``q`` has relative position ``k - q``. Small
distances get one bucket each; larger ones share logarithmically wider buckets up to
``max_distance``, beyond which everything falls in the last bucket. Bidirectional attention (the
encoder) spends half of the buckets on keys to the right; unidirectional attention (the decoder)
maps every key to the right onto bucket 0 (the causal mask hides them anyway).

The logarithmic boundaries are computed exactly once per configuration, on the host with rational
arithmetic, and the buckets are then integer comparisons. The float formula of Mesh TensorFlow and
Hugging Face ``floor(log(n / e) / log(d / e) * (b - e))`` lands exactly on an integer at some
distances (16, 32 and 64 for the default bidirectional table), where float32 rounding could pick
either neighbour; the exact thresholds give the mathematically right bucket, which is also what
PyTorch's float32 evaluation yields for every valid configuration we checked.
"""

import functools
from fractions import Fraction
from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def _check(num_buckets: int, max_distance: int, bidirectional: bool) -> Tuple[int, int]:
  """``(buckets per direction, exact buckets)``; raises for configurations that make no sense."""
  per_side = num_buckets // 2 if bidirectional else num_buckets
  max_exact = per_side // 2
  if max_exact < 1:
    raise ValueError(f"relative position bias: num_buckets={num_buckets} is too small "
                     f"({'bidirectional' if bidirectional else 'unidirectional'} attention needs at "
                     f"least {4 if bidirectional else 2})")
  if max_distance <= max_exact:
    raise ValueError(f"relative position bias: max_distance={max_distance} must exceed the "
                     f"{max_exact} exact buckets of num_buckets={num_buckets} "
                     f"({'bidirectional' if bidirectional else 'unidirectional'})")
  return per_side, max_exact


@functools.lru_cache(maxsize=None)
def log_bucket_thresholds(num_buckets: int, max_distance: int,
                          bidirectional: bool) -> Tuple[int, ...]:
  """Smallest distance that reaches each logarithmic bucket after the exact ones.

  Distance ``n >= max_exact`` goes to bucket ``max_exact + j`` where ``j`` is the largest integer with
  ``(n / max_exact) ** (per_side - max_exact) >= (max_distance / max_exact) ** j`` (capped at the last
  bucket). Threshold ``j`` is the smallest such ``n``; found with exact rational arithmetic.
  """
  per_side, max_exact = _check(num_buckets, max_distance, bidirectional)
  log_buckets = per_side - max_exact
  ratio = Fraction(max_distance, max_exact)
  thresholds = []
  n = max_exact
  for j in range(1, log_buckets):
    target = ratio ** j
    while Fraction(n, max_exact) ** log_buckets < target:
      n += 1
    thresholds.append(n)
  return tuple(thresholds)


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128):
  """Bucket index (int32, in ``[0, num_buckets)``) of each ``key_position - query_position``."""
  per_side, max_exact = _check(num_buckets, max_distance, bidirectional)
  rel = jnp.asarray(relative_position, jnp.int32)
  if bidirectional:
    offset = jnp.where(rel > 0, per_side, 0)
    distance = jnp.abs(rel)
  else:
    offset = 0
    distance = -jnp.minimum(rel, 0)
  thresholds = np.asarray(log_bucket_thresholds(num_buckets, max_distance, bidirectional), np.int32)
  log_bucket = max_exact + jnp.sum(distance[..., None] >= thresholds, axis=-1, dtype=jnp.int32)
  return (offset + jnp.where(distance < max_exact, distance, log_bucket)).astype(jnp.int32)


class RelativePositionBias(nn.Module):
  """Learned per-head bias ``[1, heads, q_len, k_len]`` from bucketed relative positions.

  The table ``rel_embedding`` is ``[num_buckets, num_heads]``, the layout of Hugging Face's
  ``relative_attention_bias`` embedding. A stack computes the bias once and shares it across layers.
  The bias is gathered in ``dtype`` (the compute dtype, as T5X does): with per-example positions it
  is ``[batch, heads, q_len, k_len]``, worth keeping in bfloat16 for long sequences.
  """
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  embedding_init: Any = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

  @nn.compact
  def __call__(self, query_positions, key_positions):
    """Positions ``[Q]``/``[K]`` -> bias ``[1, H, Q, K]``; per-example ``[B, Q]``/``[B, K]`` (or one
    of them per-example) -> ``[B, H, Q, K]``. Positions are ints; only their differences matter."""
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(self.embedding_init, ("relpos_buckets", "heads")),
        (self.num_buckets, self.num_heads), self.param_dtype)
    q, k = jnp.asarray(query_positions), jnp.asarray(key_positions)
    rel = k[..., None, :] - q[..., :, None]  # [Q, K] or [B, Q, K]
    buckets = relative_position_bucket(rel, bidirectional=self.bidirectional,
                                       num_buckets=self.num_buckets, max_distance=self.max_distance)
    bias = jnp.moveaxis(jnp.take(table.astype(self.dtype), buckets, axis=0), -1, -3)
    return bias if bias.ndim == 4 else bias[None]
