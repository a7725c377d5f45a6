"""A tiny encoder-decoder implementing ``palix.models.base.BaseModel``, for the trainer's tests.

Images are patchified and mean-pooled, the prompt embedding is mean-pooled, and each decoder
position predicts from ``embed(decoder_input_token) + image + prompt`` through a residual MLP (no
attention). It learns ``palix.training.synthetic_data``'s task. Parameters carry logical axis names
(every dimension even, so a 2-way mesh axis shards them) and live under ``encoder/`` and
``decoder/`` so tests can freeze or re-group them by path.
"""

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from palix.models import base
from palix.models import losses

_KEYS = ("images", "image_mask", "encoder_input_tokens", "decoder_input_tokens")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TinyConfig:
  vocab_size: int = 12
  embed: int = 16
  mlp: int = 32
  patch: int = 4
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"


# Uniform initialisers: random normals (erf_inv) make XLA:CPU compile the init several times slower.
_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
_EMBED_INIT = nn.initializers.uniform(1.7)


def _dense(features, axes, cfg, name):
  return nn.Dense(features, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                  kernel_init=nn.with_logical_partitioning(_KERNEL_INIT, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                  name=name)


class Encoder(nn.Module):
  config: TinyConfig

  @nn.compact
  def __call__(self, images, image_mask, tokens):
    c = self.config
    b, n, h, w, ch = images.shape
    p = c.patch
    patches = images.reshape(b, n, h // p, p, w // p, p, ch).transpose(0, 1, 2, 4, 3, 5, 6)
    patches = patches.reshape(b, n, (h // p) * (w // p), p * p * ch)
    feats = _dense(c.embed, ("patch", "embed"), c, "image_proj")(patches).mean(axis=2)
    mask = image_mask.astype(feats.dtype)[..., None]
    image = (feats * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
    table = self.param("prompt_embedding",
                       nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")),
                       (c.vocab_size, c.embed), jnp.dtype(c.param_dtype))
    weights = (tokens > 0).astype(feats.dtype)[..., None]
    prompt = (table[tokens].astype(feats.dtype) * weights).sum(1) / jnp.maximum(weights.sum(1), 1)
    return nn.with_logical_constraint(image + prompt, ("batch", "embed"))


class Decoder(nn.Module):
  config: TinyConfig

  @nn.compact
  def __call__(self, context, tokens, deterministic=True):
    c = self.config
    table = self.param("token_embedding",
                       nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")),
                       (c.vocab_size, c.embed), jnp.dtype(c.param_dtype))
    x = table[tokens].astype(jnp.dtype(c.dtype)) + context[:, None, :]
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    y = nn.gelu(_dense(c.mlp, ("embed", "mlp"), c, "wi")(x))
    y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    x = x + _dense(c.embed, ("mlp", "embed"), c, "wo")(y)
    return _dense(c.vocab_size, ("embed", "vocab"), c, "logits")(x)


class TinyEncDec(nn.Module):
  config: TinyConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def __call__(self, images, image_mask, encoder_input_tokens, decoder_input_tokens,
               deterministic=True):
    context = self.encoder(images, image_mask, encoder_input_tokens)
    return self.decoder(context, decoder_input_tokens, deterministic)


@gin.configurable
class TinyModel(base.BaseModel):
  """The contract over ``TinyEncDec``. ``frozen`` lists top-level prefixes to freeze."""

  def __init__(self, config: TinyConfig = TinyConfig(), image_size: int = 16, frozen=()):
    self.config = config
    self.module = TinyEncDec(config)
    self.image_size = image_size
    self.frozen = tuple(frozen)

  def frozen_param_prefixes(self):
    return self.frozen

  def example_inputs(self, batch_size=1):
    s = self.image_size
    return {"images": jax.ShapeDtypeStruct((batch_size, 1, s, s, 3), jnp.float32),
            "image_mask": jax.ShapeDtypeStruct((batch_size, 1), jnp.int32),
            "encoder_input_tokens": jax.ShapeDtypeStruct((batch_size, 4), jnp.int32),
            "decoder_input_tokens": jax.ShapeDtypeStruct((batch_size, 4), jnp.int32)}

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    input_types = input_types or {}
    dummy = {k: jnp.zeros(input_shapes[k], input_types.get(k, jnp.float32 if k == "images"
                                                           else jnp.int32)) for k in _KEYS}
    return self.module.init(rng, **dummy)

  def _logits(self, params, batch, rng=None):
    rngs = {"dropout": rng} if rng is not None else None
    return self.module.apply({"params": params}, *(batch[k] for k in _KEYS),
                             deterministic=rng is None, rngs=rngs)

  def loss_fn(self, params, batch, rng):
    logits = self._logits(params, batch, rng)
    return losses.weighted_cross_entropy_loss(logits, batch["decoder_target_tokens"],
                                              batch["decoder_loss_weights"])

  def score_batch(self, params, batch):
    logp = jax.nn.log_softmax(self._logits(params, batch).astype(jnp.float32))
    token = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    return (token * batch["decoder_loss_weights"]).sum(-1)

  def predict_batch_with_aux(self, params, batch, rng=None, **decode_kwargs):
    """Greedy decoding, one position at a time (re-running the tiny decoder each step)."""
    del rng, decode_kwargs
    length = batch["decoder_input_tokens"].shape[1]
    tokens = jnp.zeros_like(batch["decoder_input_tokens"])
    outputs, logprobs = [], []
    for t in range(length):
      logp = jax.nn.log_softmax(self._logits(params, {**batch, "decoder_input_tokens": tokens}))
      token = jnp.argmax(logp[:, t], axis=-1).astype(jnp.int32)
      outputs.append(token)
      logprobs.append(jnp.take_along_axis(logp[:, t], token[:, None], -1)[:, 0])
      if t + 1 < length:
        tokens = tokens.at[:, t + 1].set(token)
    return jnp.stack(outputs, 1), {"logprobs": jnp.stack(logprobs, 1)}
