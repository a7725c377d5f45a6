"""Pooling heads that respect padding: a token with segment id 0 never contributes.

``valid`` is ``[B, L]`` (one output per sequence, ``[B, D]``) or, for packed sequences holding
several images, ``[B, K, L]``: row ``k`` marks the tokens of image slot ``k``, and the output is one
vector per slot, ``[B, K, D]``. A slot without tokens (an empty slot of a packed row) gives zeros.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from palix.layers.attention import MultiHeadAttention
from palix.layers.masks import padding_mask
from palix.layers.mlp import Mlp
from palix.layers.norms import LayerNorm


class NoPool(nn.Module):
  """Return every token (what PaLI-X feeds its encoder)."""

  def __call__(self, tokens, valid, deterministic=True):
    return tokens


class GlobalAveragePool(nn.Module):
  """Mean over the real tokens: ``sum(x * valid) / sum(valid)`` (per image slot when packed)."""

  def __call__(self, tokens, valid, deterministic=True):
    if valid.ndim == 3:
      w = valid.astype(tokens.dtype)
      total = jnp.einsum("bkl,bld->bkd", w, tokens)
      return total / jnp.maximum(w.sum(axis=-1), 1)[..., None]
    w = valid.astype(tokens.dtype)[..., None]
    return (tokens * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1)


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned probe attends over the real tokens, then an MLP.

  Packed (``valid [B, K, L]``): the same probe is used once per image slot, each copy attending
  only to its own image's tokens.
  """
  num_heads: int
  mlp_dim: int
  activation: Callable = nn.gelu
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, valid, deterministic=True):
    b, _, d = tokens.shape
    per_slot = valid.ndim == 3
    slots = valid.shape[1] if per_slot else 1
    probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                             (None, None, "embed")),
                       (1, 1, d), self.param_dtype)
    probe = jnp.broadcast_to(probe, (b, slots, d)).astype(self.dtype)
    if per_slot:
      mask = valid.astype(bool)[:, None]  # [B, 1, K, L]: probe k sees image k's tokens
    else:
      mask = padding_mask(jnp.ones((b, 1), bool), valid)
    x = MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="attention")(probe, tokens, mask=mask)
    y = LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="norm")(x)
    x = x + Mlp(self.mlp_dim, activation=self.activation, dtype=self.dtype,
                param_dtype=self.param_dtype, name="mlp")(y, deterministic)
    if per_slot:  # a probe with no tokens attended to nothing real: its output is masked to 0
      return jnp.where(valid.any(axis=-1)[..., None], x, 0).astype(x.dtype)
    return x[:, 0]
