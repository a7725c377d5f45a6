"""Pooling heads that respect padding: a token with segment id 0 never contributes."""

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
  """Mean over the real tokens: ``sum(x * valid) / sum(valid)``."""

  def __call__(self, tokens, valid, deterministic=True):
    w = valid.astype(tokens.dtype)[..., None]
    return (tokens * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1)


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned probe attends over the real tokens, then an MLP."""
  num_heads: int
  mlp_dim: int
  activation: Callable = nn.gelu
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, valid, deterministic=True):
    b, _, d = tokens.shape
    probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                             (None, None, "embed")),
                       (1, 1, d), self.param_dtype)
    probe = jnp.broadcast_to(probe, (b, 1, d)).astype(self.dtype)
    mask = padding_mask(jnp.ones((b, 1), bool), valid)
    x = MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="attention")(probe, tokens, mask=mask)
    y = LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="norm")(x)
    x = x + Mlp(self.mlp_dim, activation=self.activation, dtype=self.dtype,
                param_dtype=self.param_dtype, name="mlp")(y, deterministic)
    return x[:, 0]
