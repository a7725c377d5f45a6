"""Multi-head attention with logical axis names, optional QK-norm and segment-id masks.

Attention itself goes through ``jax.nn.dot_product_attention`` so that a GPU can use its fused
(cuDNN) kernel; ``implementation`` is passed through unchanged (None lets JAX choose).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from palix.layers import initializers as inits
from palix.layers.dense import MultiAxisDense
from palix.layers.norms import LayerNorm

Array = Any


def dot_product_attention(query, key, value, *, mask=None, bias=None, scale=None,
                          implementation=None):
  """Softmax attention over ``[batch, length, heads, head_dim]`` arrays.

  ``mask`` is boolean and broadcastable to ``[batch, heads, q_len, kv_len]``; ``bias`` is added to the
  logits (T5's relative position bias). ``scale`` defaults to ``1/sqrt(head_dim)``.
  """
  if bias is not None:
    bias = bias.astype(query.dtype)
  return jax.nn.dot_product_attention(
      query, key, value, bias=bias, mask=mask, scale=scale, implementation=implementation)


class MultiHeadAttention(nn.Module):
  """Separate Q/K/V projections (bias optional), optional per-head QK LayerNorm, output projection.

  Attributes:
    num_heads: number of heads.
    head_dim: per-head width; defaults to ``embed // num_heads``.
    qkv_bias: bias on the Q, K and V projections (ViT-22B drops it).
    out_bias: bias on the output projection.
    qk_norm: LayerNorm over each head's queries and keys before the dot product (ViT-22B).
    norm_bias: whether the QK-norm LayerNorms have a bias.
    scale: logit scale; None gives ``1/sqrt(head_dim)`` (T5 uses 1.0).
  """
  num_heads: int
  head_dim: Optional[int] = None
  qkv_bias: bool = True
  out_bias: bool = True
  qk_norm: bool = False
  norm_bias: bool = True
  scale: Optional[float] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  implementation: Optional[str] = None
  kernel_init: Any = inits.lecun_normal

  def project_qkv(self, inputs_q, inputs_kv):
    embed = inputs_q.shape[-1]
    head_dim = self.head_dim or embed // self.num_heads

    def proj(name, x):
      return MultiAxisDense(
          (self.num_heads, head_dim), kernel_axes=("embed", "heads", "kv"),
          use_bias=self.qkv_bias, bias_axes=("heads", "kv"), dtype=self.dtype,
          param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)(x)

    q, k, v = proj("query", inputs_q), proj("key", inputs_kv), proj("value", inputs_kv)
    if self.qk_norm:
      q = LayerNorm(use_bias=self.norm_bias, axis_name="kv", dtype=self.dtype,
                    param_dtype=self.param_dtype, name="query_norm")(q)
      k = LayerNorm(use_bias=self.norm_bias, axis_name="kv", dtype=self.dtype,
                    param_dtype=self.param_dtype, name="key_norm")(k)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))
    return q, k, v

  def project_out(self, attended, embed):
    return MultiAxisDense(
        (embed,), kernel_axes=("heads", "kv", "embed"), num_contract=2, use_bias=self.out_bias,
        bias_axes=("embed",), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=self.kernel_init, name="out")(attended)

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, mask=None, bias=None):
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    q, k, v = self.project_qkv(inputs_q, inputs_kv)
    attended = dot_product_attention(q, k, v, mask=mask, bias=bias, scale=self.scale,
                                     implementation=self.implementation)
    out = self.project_out(attended, inputs_q.shape[-1])
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))
