"""``T5Config``: everything that shapes a T5.1.1 / UL2 encoder-decoder (gin-configurable).

The gated MLP's activation is a function, chosen in gin with the constants ``t5.gelu`` (tanh
approximation: T5.1.1's "gated-gelu", Hugging Face's ``gelu_new``) or ``t5.silu`` (UL2's "gated-silu").
"""

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from palix.layers.mlp import gelu_tanh  # T5.1.1's gated-gelu (shared with the ViT MLP)
from palix.layers.relative_position import log_bucket_thresholds


def silu(x):
  """SiLU / swish (UL2's gated-silu)."""
  return nn.silu(x)


# gin constant name -> activation; also used to write a config back as gin (``palix convert``).
ACTIVATIONS = {"gelu": gelu_tanh, "silu": silu}
for _name, _fn in ACTIVATIONS.items():
  gin.constant(f"t5.{_name}", _fn)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Sizes and options of ``palix.models.t5.T5EncoderDecoder``. Defaults: T5.1.1 small."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  activation: Callable = gelu_tanh  # of the gated MLP: wo(act(wi_0 x) * wi_1 x)
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False  # True: tied, logits = (x / sqrt(emb_dim)) @ embedding.T
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_eps: float = 1e-6
  scan: bool = False
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  attention_impl: Optional[str] = None  # passed to jax.nn.dot_product_attention

  def validate(self) -> "T5Config":
    """Raise ``ValueError`` naming the field when the configuration cannot build a model."""
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                 "num_decoder_layers"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"T5Config.{name} must be a positive integer; got {value!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"T5Config.dropout_rate must be in [0, 1); got {self.dropout_rate}")
    for bidirectional in (True, False):  # encoder and decoder tables
      log_bucket_thresholds(self.relative_attention_num_buckets,
                            self.relative_attention_max_distance, bidirectional)
    if not hasattr(jax.checkpoint_policies, self.remat_policy):
      raise ValueError(f"T5Config.remat_policy {self.remat_policy!r} is not a "
                       "jax.checkpoint_policies name")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"T5Config.{name} {getattr(self, name)!r} is not a dtype name") from e
    return self

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def activation_name(self) -> str:
    """The ``t5.*`` gin constant of ``activation`` (ValueError for a custom function)."""
    for name, fn in ACTIVATIONS.items():
      if fn is self.activation:
        return name
    raise ValueError(f"T5Config.activation {self.activation!r} is not one of the gin constants "
                     f"{', '.join('t5.' + n for n in ACTIVATIONS)}")

  def to_gin(self, name: str = "T5Config") -> str:
    """gin bindings that rebuild this configuration (``include`` the result, then use ``@T5Config()``)."""
    lines = []
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      text = f"%t5.{self.activation_name()}" if field.name == "activation" else repr(value)
      lines.append(f"{name}.{field.name} = {text}")
    return "\n".join(lines) + "\n"
