"""The T5 encoder and decoder stacks (pre-norm blocks, RMS norms, shared relative position bias).

Every layer method has the form ``(x, layer_index, context, deterministic) -> (x, per_layer_out)`` so
that the same layer class runs unrolled (``layers_0``, ``layers_1``, ...) or under ``nn.scan``
(parameters stacked on a leading ``layers`` axis) without a second code path. ``context`` holds what
every layer shares (masks, the position bias, the decode cache).

The decoder layer has three entry points on the same parameters:

* ``__call__``: teacher forcing over a whole target sequence;
* ``cross_key_value``: the cross-attention keys/values of ``encoded`` (computed once per input);
* ``step``: one token against the cache; it returns this step's self-attention key/value and the
  caller writes them into the cache for all layers at once.

Cache arrays are ``[batch, layers, length, heads, head_dim]`` (batch first, so beam search can gather
them); a layer reads its slice with ``layer_index``, which also works inside ``nn.scan``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from palix.layers.masks import causal_mask, segment_mask
from palix.layers.mlp import GatedMlp
from palix.layers.norms import RMSNorm
from palix.layers.relative_position import RelativePositionBias
from palix.layers.t5_attention import T5Attention

EMBED_AXES = ("batch", "length", "embed")


def _dtypes(c):
  return dict(dtype=c.compute_dtype, param_dtype=c.params_dtype)


def _norm(c, name):
  return RMSNorm(epsilon=c.layer_norm_eps, name=name, **_dtypes(c))


def _attention(c, name):
  return T5Attention(num_heads=c.num_heads, head_dim=c.head_dim, embed_dim=c.emb_dim,
                     implementation=c.attention_impl, name=name, **_dtypes(c))


def _mlp(c, name):
  return GatedMlp(c.mlp_dim, activation=c.activation, dropout_rate=c.dropout_rate,
                  kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                  name=name, **_dtypes(c))


def _relpos(c, bidirectional, name):
  return RelativePositionBias(
      num_buckets=c.relative_attention_num_buckets, max_distance=c.relative_attention_max_distance,
      num_heads=c.num_heads, bidirectional=bidirectional, name=name, **_dtypes(c))


def _layer_stack(layer_cls, c, num_layers, methods):
  """Unrolled list of layers, or one ``nn.scan`` over them; ``remat`` wraps ``__call__``."""
  if c.remat:
    layer_cls = nn.remat(layer_cls, policy=getattr(jax.checkpoint_policies, c.remat_policy),
                         static_argnums=(4,))
  if not c.scan:
    return [layer_cls(c, name=f"layers_{i}") for i in range(num_layers)]
  return nn.scan(layer_cls, variable_axes={"params": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(0, nn.broadcast, nn.broadcast), length=num_layers,
                 metadata_params={nn.PARTITION_NAME: "layers"}, methods=methods)(c, name="layers")


def _run_layers(layers, method, x, context, deterministic, num_layers):
  """Applies ``method`` of every layer; returns ``(x, outputs stacked on axis 0)``."""
  if isinstance(layers, (list, tuple)):  # setup() turns lists into tuples
    outputs = []
    for i, layer in enumerate(layers):
      x, out = getattr(layer, method)(x, i, context, deterministic)
      outputs.append(out)
    if outputs[0] is None:
      return x, None
    return x, jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *outputs)
  return getattr(layers, method)(x, jnp.arange(num_layers), context, deterministic)


class EncoderLayer(nn.Module):
  """``x += Attn(RMSNorm(x)); x += GatedMlp(RMSNorm(x))`` with bidirectional attention."""
  config: Any

  @nn.compact
  def __call__(self, x, layer_index, context, deterministic):
    del layer_index
    c = self.config
    dropout = nn.Dropout(c.dropout_rate)
    y = _norm(c, "pre_attention_layer_norm")(x)
    y = _attention(c, "attention")(y, y, mask=context["mask"], bias=context["bias"])
    x = x + dropout(y, deterministic=deterministic)
    y = _norm(c, "pre_mlp_layer_norm")(x)
    y = _mlp(c, "mlp")(y, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, EMBED_AXES), None


class Encoder(nn.Module):
  """Embeddings ``[B, L, D]`` and a validity mask ``[B, L]`` -> encoded ``[B, L, D]``.

  ``positions`` (int ``[B, L]``, default ``0..L-1``) place the tokens for the relative position bias.
  ``segment_ids`` (int ``[B, L]``, 0 = padding; packed rows): a token attends only to tokens of its
  own segment; without them every token attends to every real key.
  """
  config: Any

  @nn.compact
  def __call__(self, x, mask, deterministic=True, positions=None, segment_ids=None):
    c = self.config
    dropout = nn.Dropout(c.dropout_rate)
    if positions is None:
      positions = jnp.arange(x.shape[1])
    if segment_ids is None:
      attention_mask = mask.astype(bool)[:, None, None, :]  # padded keys only, as T5/HF do
    else:
      attention_mask = segment_mask(segment_ids)
    context = dict(mask=attention_mask,
                   bias=_relpos(c, True, "relpos_bias")(positions, positions))
    x = dropout(x.astype(c.compute_dtype), deterministic=deterministic)
    layers = _layer_stack(EncoderLayer, c, c.num_encoder_layers, None)
    x, _ = _run_layers(layers, "__call__", x, context, deterministic, c.num_encoder_layers)
    x = _norm(c, "encoder_norm")(x)
    x = dropout(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, EMBED_AXES)


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention over the encoder output, gated MLP (all pre-norm)."""
  config: Any

  def setup(self):
    c = self.config
    self.pre_self_attention_layer_norm = _norm(c, "pre_self_attention_layer_norm")
    self.self_attention = _attention(c, "self_attention")
    self.pre_cross_attention_layer_norm = _norm(c, "pre_cross_attention_layer_norm")
    self.encoder_decoder_attention = _attention(c, "encoder_decoder_attention")
    self.pre_mlp_layer_norm = _norm(c, "pre_mlp_layer_norm")
    self.mlp = _mlp(c, "mlp")
    self.dropout = nn.Dropout(c.dropout_rate)

  def _cross_attention_and_mlp(self, x, cross_key, cross_value, cross_mask, deterministic):
    y = self.pre_cross_attention_layer_norm(x)
    y = self.encoder_decoder_attention.attend(
        self.encoder_decoder_attention.project_query(y), cross_key, cross_value, mask=cross_mask)
    x = x + self.dropout(y, deterministic=deterministic)
    y = self.mlp(self.pre_mlp_layer_norm(x), deterministic)
    x = x + self.dropout(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, EMBED_AXES)

  def __call__(self, x, layer_index, context, deterministic):
    del layer_index
    y = self.pre_self_attention_layer_norm(x)
    y = self.self_attention(y, y, mask=context["self_mask"], bias=context["self_bias"])
    x = x + self.dropout(y, deterministic=deterministic)
    cross_key, cross_value = self.encoder_decoder_attention.project_key_value(context["encoded"])
    return self._cross_attention_and_mlp(x, cross_key, cross_value, context["cross_mask"],
                                         deterministic), None

  def cross_key_value(self, encoded, layer_index, context, deterministic):
    del layer_index, context, deterministic
    return encoded, self.encoder_decoder_attention.project_key_value(encoded)

  def step(self, x, layer_index, context, deterministic):
    cache, step = context["cache"], context["step"]

    def layer_slice(name):
      return jax.lax.dynamic_index_in_dim(cache[name], layer_index, axis=1, keepdims=False)

    y = self.pre_self_attention_layer_norm(x)
    query = self.self_attention.project_query(y)
    new_key, new_value = self.self_attention.project_key_value(y)  # [B, 1, H, Dh]
    keys = jax.lax.dynamic_update_slice_in_dim(
        layer_slice("self_key"), new_key.astype(cache["self_key"].dtype), step, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(
        layer_slice("self_value"), new_value.astype(cache["self_value"].dtype), step, axis=1)
    y = self.self_attention.attend(query, keys, values, mask=context["self_mask"],
                                   bias=context["self_bias"])
    x = x + self.dropout(y, deterministic=deterministic)
    x = self._cross_attention_and_mlp(x, layer_slice("cross_key"), layer_slice("cross_value"),
                                      context["cross_mask"], deterministic)
    return x, (new_key, new_value)


DECODER_LAYER_METHODS = ["__call__", "cross_key_value", "step"]


class Decoder(nn.Module):
  """Decoder stack over target embeddings; returns normalised hidden states (logits are outside)."""
  config: Any

  def setup(self):
    c = self.config
    self.relpos_bias = _relpos(c, False, "relpos_bias")
    self.layers = _layer_stack(DecoderLayer, c, c.num_decoder_layers, DECODER_LAYER_METHODS)
    self.decoder_norm = _norm(c, "decoder_norm")
    self.dropout = nn.Dropout(c.dropout_rate)

  def _finish(self, x, deterministic):
    x = self.dropout(self.decoder_norm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, EMBED_AXES)

  def __call__(self, y, encoded, encoder_mask, deterministic=True, segment_ids=None,
               positions=None, encoder_segment_ids=None):
    """Teacher forcing: target embeddings ``[B, Ld, D]`` -> hidden states ``[B, Ld, D]``.

    Packed rows (T5X's packing) give ``segment_ids`` ``[B, Ld]`` (0 = padding), per-segment
    ``positions`` and the encoder's ``encoder_segment_ids`` ``[B, Le]``: self-attention is causal
    within a segment and cross-attention sees the encoder tokens of the same segment only.
    """
    c = self.config
    if positions is None:
      positions = jnp.arange(y.shape[1])
    if segment_ids is None:
      self_mask = causal_mask(y.shape[1])
      cross_mask = encoder_mask.astype(bool)[:, None, None, :]
    else:
      if encoder_segment_ids is None:
        raise ValueError("Decoder: packed targets (segment_ids) need the encoder's "
                         "encoder_segment_ids for cross-attention")
      self_mask = causal_mask(y.shape[1]) & segment_mask(segment_ids)
      cross_mask = segment_mask(segment_ids, encoder_segment_ids)
    context = dict(encoded=encoded.astype(c.compute_dtype), cross_mask=cross_mask,
                   self_mask=self_mask, self_bias=self.relpos_bias(positions, positions))
    y = self.dropout(y.astype(c.compute_dtype), deterministic=deterministic)
    y, _ = _run_layers(self.layers, "__call__", y, context, deterministic, c.num_decoder_layers)
    return self._finish(y, deterministic)

  def init_cache(self, encoded, encoder_mask, max_decode_len):
    """The decode cache: cross keys/values of ``encoded``, the mask, empty self-attention buffers."""
    c = self.config
    _, (cross_key, cross_value) = _run_layers(self.layers, "cross_key_value",
                                              encoded.astype(c.compute_dtype), None, True,
                                              c.num_decoder_layers)
    batch = encoded.shape[0]
    buffer = jnp.zeros((batch, c.num_decoder_layers, max_decode_len, c.num_heads, c.head_dim),
                       c.compute_dtype)
    return dict(encoder_mask=encoder_mask.astype(bool),
                cross_key=jnp.moveaxis(cross_key, 0, 1),  # [layers, B, ...] -> [B, layers, ...]
                cross_value=jnp.moveaxis(cross_value, 0, 1),
                self_key=buffer, self_value=buffer)

  def step(self, y, cache, step, deterministic=True):
    """One target embedding ``[B, 1, D]`` at position ``step`` -> ``(hidden [B, 1, D], new cache)``."""
    c = self.config
    max_len = cache["self_key"].shape[2]
    key_positions = jnp.arange(max_len)
    context = dict(cache=cache, step=step,
                   cross_mask=cache["encoder_mask"][:, None, None, :],
                   self_mask=(key_positions <= step)[None, None, None, :],
                   self_bias=self.relpos_bias(jnp.reshape(step, (1,)), key_positions))
    y = self.dropout(y.astype(c.compute_dtype), deterministic=deterministic)
    y, (new_key, new_value) = _run_layers(self.layers, "step", y, context, deterministic,
                                          c.num_decoder_layers)
    new_cache = dict(cache)
    for name, new in (("self_key", new_key), ("self_value", new_value)):
      new = jnp.moveaxis(new, 0, 1).astype(cache[name].dtype)  # [B, layers, 1, H, Dh]
      new_cache[name] = jax.lax.dynamic_update_slice_in_dim(cache[name], new, step, axis=2)
    return self._finish(y, deterministic), new_cache
