"""Text encoders for image-text models: token ids ``[B, L]`` (0 = padding) -> ``[B, width]``.

Two towers, chosen in gin by which config object is bound (each config builds its module):

* ``TextTowerConfig``: a small Transformer (token + learned position embeddings, then the ViT's
  own ``Encoder`` stack with the padding mask), mean-pooled over the real tokens;
* ``T5TextTowerConfig``: palix's T5.1.1 encoder (``T5EncoderDecoder.embed`` + ``encode``; the
  decoder is never called, so it has no parameters), mean-pooled the same way.

Mean pooling over real tokens (not CLIP's end-of-text token) keeps a one-word query and its
EOS on equal footing and needs no assumption about where EOS sits.
"""

import dataclasses

import flax.linen as nn
import gin
import jax.numpy as jnp

from palix.layers import initializers as inits
from palix.models.t5 import T5Config, T5EncoderDecoder
from palix.models.vit import Encoder, ViTConfig


def masked_mean(x, mask):
  """Mean of ``x [B, L, D]`` over positions where ``mask [B, L]`` is nonzero (0 if none)."""
  weights = (mask > 0).astype(jnp.float32)[..., None]
  return jnp.sum(x.astype(jnp.float32) * weights, axis=1) / jnp.maximum(weights.sum(1), 1.0)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
  """The small Transformer text tower.

  Attributes:
    vocab_size: embedding rows; must cover every id of the tokenizer (palix's SentencePiece
      model has 1674 pieces).
    max_len: learned positions (longer texts are an error).
    width, depth, mlp_dim, num_heads: Transformer sizes (pre-LN blocks of the ViT).
  """
  vocab_size: int = 2048
  max_len: int = 16
  width: int = 128
  depth: int = 2
  mlp_dim: int = 256
  num_heads: int = 4
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def output_width(self) -> int:
    return self.width

  def make(self, name: str) -> nn.Module:
    return TextTower(self, name=name)


class TextTower(nn.Module):
  config: TextTowerConfig

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True):
    c = self.config
    if tokens.ndim != 2 or tokens.shape[1] > c.max_len:
      raise ValueError(f"TextTower expects tokens [batch, length <= {c.max_len}]; got shape "
                       f"{tuple(tokens.shape)}")
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
    x = nn.Embed(c.vocab_size, c.width, embedding_init=nn.with_logical_partitioning(
        inits.normal(0.02), ("vocab", "embed")), name="token_embedder", **kw)(tokens)
    positions = self.param("posemb", nn.with_logical_partitioning(
        inits.normal(0.02), ("length", "embed")), (c.max_len, c.width), kw["param_dtype"])
    x = x + positions[None, :tokens.shape[1]].astype(x.dtype)
    blocks = ViTConfig(width=c.width, depth=c.depth, mlp_dim=c.mlp_dim, num_heads=c.num_heads,
                       patch_size=1, image_size=1, dtype=c.dtype, param_dtype=c.param_dtype)
    segment_ids = (tokens > 0).astype(jnp.int32)
    x, _ = Encoder(blocks.resolved(), name="encoder")(x, segment_ids, deterministic)
    return masked_mean(x, segment_ids)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5TextTowerConfig:
  """palix's T5 encoder as the text tower (e.g. ``@T5Config()`` of ``models/t5/t5_1_1_tiny.gin``)."""
  t5: T5Config = gin.REQUIRED

  @property
  def output_width(self) -> int:
    return self.t5.emb_dim

  def make(self, name: str) -> nn.Module:
    return T5TextTower(self, name=name)


class T5TextTower(nn.Module):
  config: T5TextTowerConfig

  def setup(self):
    self.t5 = T5EncoderDecoder(self.config.t5.validate(), name="t5")

  def __call__(self, tokens, deterministic: bool = True):
    mask = (tokens > 0).astype(jnp.int32)
    encoded = self.t5.encode(self.t5.embed(tokens), mask, deterministic=deterministic)
    return masked_mean(encoded, mask)
