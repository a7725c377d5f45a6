"""A tiny token-sequence classifier (the parity task), standard or with an AdaTape tape.

Token ids ``[B, L]`` (0 = padding) -> embedding + learned position embedding -> the ViT's
``Encoder`` blocks (``palix.models.vit``; block kind, width, depth, ``scan`` ... from a
``ViTConfig``) -> mean over the real tokens -> a linear head. With ``adatape`` set, the encoder
appends tape tokens before block ``adatape.tape_layer`` (``palix.layers.adatape``); an
``InputTapeBank`` then reads the one-hot tokens of each position (padding positions included, as
blank entries), so the bank has ``max_length`` entries per example.

``SequenceClassifierModel`` implements the model contract (``palix.models.base``) for batches
``{'inputs': int32 [B, L], 'labels': int32 [B]}`` (``palix.tasks.sources.parity``). The loss is
the mean softmax cross-entropy plus, with a tape, ``ponder_loss_weight`` x the mean ponder cost;
metrics add ``accuracy`` and, with a tape, ``ponder_cost`` and ``tape_tokens_mean/min/max``.
"""

import dataclasses
import functools
from typing import Any, Dict, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from palix.layers import initializers as inits
from palix.layers.adatape import AdaTape, AdaTapeConfig, ponder_loss_and_metrics
from palix.layers.pooling import GlobalAveragePool
from palix.models import base
from palix.models import losses
from palix.models.vit import Encoder, ViTConfig


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SequenceClassifierConfig:
  """The sequence classifier's shape.

  Attributes:
    encoder: width, depth, heads, MLP, block kind, ``scan`` (patch and image sizes are unused).
    vocab_size: token ids ``0..vocab_size-1``; 0 is padding.
    max_length: positions of the learned position table (longest input).
    num_classes: outputs of the head.
    adatape: ``@AdaTapeConfig()`` for the AdaTape version; None for a standard Transformer.
  """
  encoder: ViTConfig = gin.REQUIRED
  vocab_size: int = 3
  max_length: int = 64
  num_classes: int = 2
  adatape: Optional[AdaTapeConfig] = None

  def resolved(self) -> "SequenceClassifierConfig":
    enc = dataclasses.replace(self.encoder, patch_size=self.encoder.patch_size or 1,
                              image_size=1).resolved()
    if enc.adatape is not None or enc.class_token:
      raise ValueError("SequenceClassifierConfig.encoder: set the tape as "
                       "SequenceClassifierConfig.adatape (not ViTConfig.adatape) and no class "
                       "token (the classifier pools the mean)")
    for name in ("vocab_size", "max_length", "num_classes"):
      if getattr(self, name) < (2 if name != "max_length" else 1):
        raise ValueError(f"SequenceClassifierConfig.{name} = {getattr(self, name)} is too small")
    tape = self.adatape
    if tape is not None:
      tape = tape.resolved(depth=enc.depth, width=enc.width, num_heads=enc.num_heads,
                           num_bank_inputs=self.max_length, class_token=False,
                           owner="SequenceClassifierConfig.adatape")
    return dataclasses.replace(self, encoder=enc, adatape=tape)


class SequenceClassifier(nn.Module):
  """Tokens ``[B, L]`` -> ``(logits [B, C], out)``; ``out`` holds the encoder's intermediates
  (with a tape: ``tape_tokens_used``, ``ponder_cost``, ``tape_segment_ids``). Config resolved."""
  config: SequenceClassifierConfig

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    c, enc = self.config, self.config.encoder
    kw = dict(dtype=enc.compute_dtype, param_dtype=enc.params_dtype)
    if tokens.shape[1] > c.max_length:
      raise ValueError(f"inputs have length {tokens.shape[1]} but "
                       f"SequenceClassifierConfig.max_length is {c.max_length}")
    segment_ids = (tokens > 0).astype(jnp.int32)
    x = nn.Embed(c.vocab_size, enc.width, embedding_init=nn.with_logical_partitioning(
        inits.normal(1.0), ("vocab", "embed")), name="embed", **kw)(tokens)
    posemb = self.param("pos_embedding", nn.with_logical_partitioning(
        inits.normal(0.02), ("length", "embed")), (c.max_length, enc.width), enc.params_dtype)
    x = x + posemb[:tokens.shape[1]].astype(x.dtype)
    tape = None
    if c.adatape is not None:
      # The bank always has max_length entries: padding positions are blank (token 0) entries.
      padded = jnp.pad(tokens, ((0, 0), (0, c.max_length - tokens.shape[1])))
      bank_input = jax.nn.one_hot(padded, c.vocab_size, dtype=x.dtype)
      tape = functools.partial(
          AdaTape(c.adatape, enc.width, layer_norm_eps=enc.layer_norm_eps, name="tape",
                          **kw), bank_input=bank_input, deterministic=not train)
    x, out = Encoder(enc, name="Transformer")(x, segment_ids, deterministic=not train, tape=tape,
                                              tape_layer=c.adatape.tape_layer if tape else 0)
    segment_ids = out.get("tape_segment_ids", segment_ids)
    pooled = GlobalAveragePool()(x, segment_ids > 0)
    logits = nn.Dense(c.num_classes, dtype=jnp.float32, param_dtype=enc.params_dtype,
                      kernel_init=nn.with_logical_partitioning(inits.zeros, ("embed", "vocab")),
                      bias_init=nn.with_logical_partitioning(inits.zeros, ("vocab",)),
                      name="head")(pooled.astype(jnp.float32))
    return logits, out


@gin.configurable
class SequenceClassifierModel(base.BaseModel):
  """The model contract for ``SequenceClassifier`` (see the module docstring).

  Args:
    config: the module config.
    input_length: the padded length of ``example_inputs``.
  """

  def __init__(self, config: SequenceClassifierConfig = gin.REQUIRED, *,
               input_length: Optional[int] = None):
    self.config = config.resolved()
    self.module = SequenceClassifier(self.config)
    self.input_length = input_length or self.config.max_length

  def example_inputs(self, batch_size: int = 1) -> Dict[str, Any]:
    return {"tokens": jax.ShapeDtypeStruct((batch_size, self.input_length), jnp.int32)}

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    del input_types
    shape = tuple((input_shapes or {}).get("inputs", (1, self.input_length)))
    return self.module.init(rng, jnp.ones(shape, jnp.int32))

  def apply(self, params, batch, dropout_rng=None):
    """``(logits, out)`` of ``batch['inputs']``; dropout when ``dropout_rng`` is given."""
    if "inputs" not in batch:
      raise KeyError(f"batch is missing 'inputs'; it has {sorted(batch)}")
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, batch["inputs"],
                             train=dropout_rng is not None, rngs=rngs)

  def loss_fn(self, params, batch, rng):
    logits, out = self.apply(params, batch, rng)
    labels = batch["labels"]
    ce, _ = losses.cross_entropy_with_z_loss(logits, labels)
    loss = jnp.mean(ce)
    metrics = {"cross_entropy": loss,
               "accuracy": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))}
    if self.config.adatape is not None:
      ponder, tape_metrics = ponder_loss_and_metrics(out, self.config.adatape)
      loss = loss + ponder
      metrics.update(tape_metrics)
    return loss, metrics

  def predict_batch_with_aux(self, params, batch, rng=None, **decode_kwargs):
    """Classes ``[B]`` and ``{'logprobs' [B, C]}`` (plus ``tape_tokens_used`` with a tape)."""
    del rng, decode_kwargs
    logits, out = self.apply(params, batch)
    aux = {"logprobs": jax.nn.log_softmax(logits, -1)}
    if "tape_tokens_used" in out:
      aux["tape_tokens_used"] = out["tape_tokens_used"]
    return jnp.argmax(logits, -1).astype(jnp.int32), aux

  def score_batch(self, params, batch):
    """``log p(label)`` per example ``[B]``."""
    logits, _ = self.apply(params, batch)
    logprobs = jax.nn.log_softmax(logits, -1)
    return jnp.take_along_axis(logprobs, batch["labels"][:, None], -1)[:, 0]
