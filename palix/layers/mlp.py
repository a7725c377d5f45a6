"""Feed-forward blocks. A block's MLP is a constructor argument so that Soft MoE can replace it."""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from palix.layers import initializers as inits


def gelu_exact(x):
  """GELU with the erf form (HF ViT's default); ``nn.gelu`` defaults to the tanh approximation."""
  return nn.gelu(x, approximate=False)


def gelu_tanh(x):
  """GELU, tanh approximation: flax's ``nn.gelu`` default, so big_vision's ViTs and SigLIP towers
  use it; T5.1.1's gated-gelu; Hugging Face ``gelu_new`` / ``gelu_pytorch_tanh``."""
  return nn.gelu(x, approximate=True)


def _dense(mlp, name, features, axes):
  """A kernel (and bias) of ``mlp`` named with the logical ``axes`` (``[in, out]``)."""
  return nn.Dense(features, use_bias=mlp.use_bias, dtype=mlp.dtype, param_dtype=mlp.param_dtype,
                  kernel_init=nn.with_logical_partitioning(mlp.kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(inits.zeros, axes[1:]), name=name)


class Mlp(nn.Module):
  """Dense -> activation -> Dense, with optional biases (ViT keeps them, T5 drops them)."""
  mlp_dim: int
  activation: Callable = gelu_exact
  use_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = inits.xavier_uniform

  @nn.compact
  def __call__(self, x, deterministic=True):
    h = self.activation(_dense(self, "wi", self.mlp_dim, ("embed", "mlp"))(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return _dense(self, "wo", x.shape[-1], ("mlp", "embed"))(h)


class GatedMlp(nn.Module):
  """T5.1.1's gated MLP: ``wo(act(wi_0 x) * wi_1 x)``, no biases by default."""
  mlp_dim: int
  activation: Callable = nn.gelu
  use_bias: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = inits.lecun_normal

  @nn.compact
  def __call__(self, x, deterministic=True):
    h = self.activation(_dense(self, "wi_0", self.mlp_dim, ("embed", "mlp"))(x))
    h = h * _dense(self, "wi_1", self.mlp_dim, ("embed", "mlp"))(x)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return _dense(self, "wo", x.shape[-1], ("mlp", "embed"))(h)
