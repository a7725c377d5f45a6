"""A Dense layer over several input and output axes whose kernel keeps its full shape.

flax's ``DenseGeneral`` calls its kernel initializer on the flattened 2-D shape, so a logically
partitioned initializer with one name per axis breaks under a mesh (google/flax#3676). Here the
kernel is declared at its full shape (``[*in_axes, *out_axes]``) with one logical name per axis;
the initializer still sees the flattened shape, so fan-in and fan-out mean what they do for a
plain Dense. Parameters are named ``kernel`` and ``bias`` as in ``DenseGeneral``.
"""

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from palix.layers import initializers as inits


class MultiAxisDense(nn.Module):
  """Contracts the last ``num_contract`` axes of the input into ``features`` output axes.

  Attributes:
    features: output axis sizes, e.g. ``(heads, head_dim)``.
    kernel_axes: logical names, one per kernel axis (contracted axes first).
    num_contract: how many trailing input axes are contracted (2 for an attention output).
    bias_axes: logical names of the bias (the output axes); used when ``use_bias``.
  """
  features: Tuple[int, ...]
  kernel_axes: Tuple[Optional[str], ...]
  num_contract: int = 1
  use_bias: bool = False
  bias_axes: Optional[Tuple[Optional[str], ...]] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = inits.lecun_normal

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    in_shape = tuple(x.shape[-self.num_contract:])
    flat_in, flat_out = math.prod(in_shape), math.prod(features)
    full_shape = in_shape + features
    if len(self.kernel_axes) != len(full_shape):
      raise ValueError(f"MultiAxisDense: kernel_axes {self.kernel_axes} do not name the "
                       f"{len(full_shape)} kernel axes of shape {full_shape}")

    def init(key, shape, dtype):
      return self.kernel_init(key, (flat_in, flat_out), dtype).reshape(shape)

    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                        full_shape, self.param_dtype)
    lead = x.shape[:-self.num_contract]
    y = jnp.dot(x.reshape(lead + (flat_in,)).astype(self.dtype),
                kernel.reshape(flat_in, flat_out).astype(self.dtype))
    y = y.reshape(lead + features)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(inits.zeros, self.bias_axes),
                        features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
