"""T5 attention: bias-free Q/K/V/output projections, logit scale 1.0, additive position bias.

Split into ``project_query``, ``project_key_value`` and ``attend`` so that a decoder can project the
cross-attention keys and values once per input and keep self-attention keys and values in a cache.
T5 does not divide the logits by ``sqrt(head_dim)``; its initialisation folds that factor into the
query projection instead (as T5X does), so trained checkpoints load unchanged.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from palix.layers.attention import dot_product_attention
from palix.layers.dense import MultiAxisDense

HEAD_AXES = ("batch", "length", "heads", "kv")


class T5Attention(nn.Module):
  """Multi-head attention with T5's conventions over ``[batch, length, embed]`` inputs.

  Attributes:
    num_heads: number of heads.
    head_dim: per-head width (T5 sets it independently of the model width).
    embed_dim: width of the output projection (the model width).
  """
  num_heads: int
  head_dim: int
  embed_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  implementation: Optional[str] = None

  def setup(self):
    def init(scale):
      return nn.initializers.variance_scaling(scale, "fan_in", "normal")

    def proj(name, scale):
      return MultiAxisDense(
          (self.num_heads, self.head_dim), kernel_axes=("embed", "heads", "kv"),
          dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init(scale), name=name)

    self.query = proj("query", 1.0 / self.head_dim)
    self.key = proj("key", 1.0)
    self.value = proj("value", 1.0)
    self.out = MultiAxisDense(
        (self.embed_dim,), kernel_axes=("heads", "kv", "embed"), num_contract=2,
        dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init(1.0), name="out")

  def project_query(self, x):
    """``[B, Q, D] -> [B, Q, H, Dh]``."""
    return nn.with_logical_constraint(self.query(x), HEAD_AXES)

  def project_key_value(self, x):
    """``[B, K, D] -> ([B, K, H, Dh], [B, K, H, Dh])``."""
    k = nn.with_logical_constraint(self.key(x), HEAD_AXES)
    v = nn.with_logical_constraint(self.value(x), HEAD_AXES)
    return k, v

  def attend(self, q, k, v, *, mask=None, bias=None):
    """Attention of projected queries over projected keys/values, then the output projection."""
    attended = dot_product_attention(q, k, v, mask=mask, bias=bias, scale=1.0,
                                     implementation=self.implementation)
    out = self.out(attended)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))

  def __call__(self, inputs_q, inputs_kv, *, mask=None, bias=None):
    k, v = self.project_key_value(inputs_kv)
    return self.attend(self.project_query(inputs_q), k, v, mask=mask, bias=bias)
