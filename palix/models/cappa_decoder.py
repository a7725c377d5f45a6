"""CapPa's text decoder: a pre-LN Transformer decoder over image tokens, with parallel prediction.

Each block is ``x += SelfAttn(LN(x)); x += CrossAttn(LN(x), image tokens); x += MLP(LN(x))``, with
bias-free Q/K/V/O projections (and, by default, bias-free block norms and MLP, big_vision's
``decoder_bias=False``). Token embedding ``N(0, 1)`` with ``vocab_size + 1`` rows (the last row is
the ``[MASK]`` token), a learned position embedding, a final LayerNorm and a zero-initialised
logits layer (papers.md §2.5).

Two ways to run the same parameters over a whole sequence (``CapPaDecoder.__call__``), chosen per
example by ``parallel [B]``:

* autoregressive teacher forcing: inputs are the targets shifted right, the self-attention is
  causal;
* parallel prediction: every input is ``[MASK]`` and the self-attention is full (every position
  sees every position). Nothing a position sees depends on the targets, so each token is predicted
  from the image alone.

Decoding (``init_decode_cache`` + ``decode_step``) is autoregressive with a key/value cache whose
leaves are all batch-leading: per layer ``self_key``/``self_value`` ``[B, max_len, H, Dh]`` and the
cross-attention ``cross_key``/``cross_value`` ``[B, P, H, Dh]`` computed once per image.
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from palix.layers.attention import MultiHeadAttention, dot_product_attention
from palix.layers.masks import causal_mask
from palix.layers.mlp import Mlp
from palix.layers.norms import LayerNorm

EMBED_AXES = ("batch", "length", "embed")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Fully resolved decoder sizes (``CapPaConfig.decoder()`` fills the "same as encoder" zeros)."""
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  use_bias: bool = False  # on the block norms and the MLP; attention projections never have one
  dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: Optional[str] = None

  @property
  def mask_id(self) -> int:
    """The ``[MASK]`` token id: one past the output vocabulary."""
    return self.vocab_size


class CachedAttention(MultiHeadAttention):
  """``MultiHeadAttention`` whose keys/values can come from, or be written into, a decode cache.

  The parameters are exactly ``MultiHeadAttention``'s (``query``, ``key``, ``value``, ``out``, same
  shapes, initialisers and axis names). Flax only lets a module create submodules in one compact
  method, so the decoding variants are keyword arguments of ``__call__`` rather than methods.
  Projections whose result is replaced by the cache are dead code that ``jit`` removes.
  """

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, mask=None, bias=None, key_value=None,
               write_index=None):
    """Returns ``(out [B, Q, D], (keys, values) [B, K, H, Dh])``.

    * ``key_value=None``: keys and values are projected from ``inputs_kv`` (``inputs_q`` if None);
      the returned pair is what a cache stores.
    * ``key_value`` without ``write_index``: attend to these precomputed keys/values (the
      cross-attention of a decode step).
    * ``key_value`` with ``write_index``: the key/value projected from ``inputs_kv`` (one
      position) is first written into ``key_value`` at ``write_index`` (the self-attention of a
      decode step); the updated cache is returned.
    """
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    q, k, v = self.project_qkv(inputs_q, inputs_kv)
    if key_value is not None:
      cached_k, cached_v = key_value
      if write_index is None:
        k, v = cached_k, cached_v
      else:
        k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), write_index, 1)
        v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), write_index, 1)
    attended = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, bias=bias,
                                     scale=self.scale, implementation=self.implementation)
    out = self.project_out(attended, inputs_q.shape[-1])
    return nn.with_logical_constraint(out, EMBED_AXES), (k, v)


class DecoderBlock(nn.Module):
  """One pre-LN decoder block with three entry points on the same parameters.

  * ``__call__``: a whole sequence under ``self_mask`` ``[B or 1, 1, L, L]``;
  * ``cross_key_value``: the cross-attention keys/values of the image tokens (once per image);
  * ``step``: one position against the cache.
  """
  config: DecoderConfig

  def setup(self):
    c = self.config
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)

    def norm(name):
      return LayerNorm(use_bias=c.use_bias, epsilon=c.layer_norm_eps, name=name, **kw)

    def attention(name):
      return CachedAttention(num_heads=c.num_heads, qkv_bias=False, out_bias=False,
                             implementation=c.attention_impl, name=name, **kw)

    self.self_attention_norm = norm("self_attention_norm")
    self.self_attention = attention("self_attention")
    self.cross_attention_norm = norm("cross_attention_norm")
    self.cross_attention = attention("cross_attention")
    self.mlp_norm = norm("mlp_norm")
    self.mlp = Mlp(c.mlp_dim, use_bias=c.use_bias, dropout_rate=c.dropout_rate, name="mlp", **kw)
    self.dropout = nn.Dropout(c.dropout_rate)

  def _cross_and_mlp(self, x, cross_out_fn, deterministic):
    x = x + self.dropout(cross_out_fn(self.cross_attention_norm(x)), deterministic=deterministic)
    y = self.mlp(self.mlp_norm(x), deterministic=deterministic)
    x = x + self.dropout(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, EMBED_AXES)

  def __call__(self, x, encoded, self_mask, deterministic=True):
    y, _ = self.self_attention(self.self_attention_norm(x), mask=self_mask)
    x = x + self.dropout(y, deterministic=deterministic)
    return self._cross_and_mlp(x, lambda h: self.cross_attention(h, encoded)[0], deterministic)

  def cross_key_value(self, encoded):
    # The query side is irrelevant here; one position keeps the discarded attention small.
    _, key_value = self.cross_attention(encoded[:, :1], encoded)
    return key_value

  def step(self, x, layer_cache, index, self_mask):
    """``x [B, 1, D]`` at position ``index`` -> ``(x, new self key/value)``."""
    y, self_kv = self.self_attention(
        self.self_attention_norm(x), mask=self_mask,
        key_value=(layer_cache["self_key"], layer_cache["self_value"]), write_index=index)
    x = x + y
    cross_kv = (layer_cache["cross_key"], layer_cache["cross_value"])
    x = self._cross_and_mlp(x, lambda h: self.cross_attention(h, key_value=cross_kv)[0], True)
    return x, self_kv


class CapPaDecoder(nn.Module):
  """Token ids + image tokens -> logits. See the module docstring."""
  config: DecoderConfig

  def setup(self):
    c = self.config
    self.token_embedding = self.param(
        "token_embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                        ("vocab", "embed")),
        (c.vocab_size + 1, c.width), c.param_dtype)
    self.position_embedding = self.param(
        "position_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(c.width ** -0.5), ("length", "embed")),
        (c.max_len, c.width), c.param_dtype)
    self.layers = [DecoderBlock(c, name=f"layers_{i}") for i in range(c.depth)]
    self.final_norm = LayerNorm(use_bias=True, epsilon=c.layer_norm_eps, dtype=c.dtype,
                                param_dtype=c.param_dtype, name="final_norm")
    self.logits_dense = nn.Dense(
        c.vocab_size, dtype=c.dtype, param_dtype=c.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)), name="logits")

  def _embed(self, tokens, positions):
    table, positions_table = jnp.asarray(self.token_embedding), jnp.asarray(self.position_embedding)
    x = jnp.take(table, tokens, axis=0) + jnp.take(positions_table, positions, axis=0)
    return nn.with_logical_constraint(x.astype(self.config.dtype), EMBED_AXES)

  def _logits(self, x):
    logits = self.logits_dense(self.final_norm(x))
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

  def _check_length(self, length, what):
    if length > self.config.max_len:
      raise ValueError(f"{what} {length} is longer than the decoder's position table "
                       f"(CapPaConfig.max_len = {self.config.max_len})")

  def __call__(self, encoded, decoder_input_tokens, parallel=None, deterministic=True):
    """Logits ``[B, L, V]``.

    Args:
      encoded: image tokens ``[B, P, E]``.
      decoder_input_tokens: ``[B, L]`` targets shifted right (BOS = 0); ignored where parallel.
      parallel: optional bool ``[B]``; True rows use parallel prediction (all ``[MASK]`` inputs,
        full self-attention), the others teacher forcing with a causal mask.
      deterministic: disables dropout.
    """
    b, length = decoder_input_tokens.shape
    self._check_length(length, "decoder_input_tokens length")
    tokens = decoder_input_tokens
    mask = causal_mask(length)
    if parallel is not None:
      parallel = jnp.asarray(parallel, bool).reshape(b)
      tokens = jnp.where(parallel[:, None], self.config.mask_id, tokens)
      mask = mask | parallel[:, None, None, None]
    x = self._embed(tokens, jnp.arange(length))
    for layer in self.layers:
      x = layer(x, encoded, mask, deterministic)
    return self._logits(x)

  def init_decode_cache(self, encoded, max_decode_len: int):
    """The cache for ``decode_step``: cross keys/values of ``encoded`` and empty self buffers."""
    self._check_length(max_decode_len, "max_decode_len")
    c = self.config
    b = encoded.shape[0]
    head_dim = c.width // c.num_heads
    empty = jnp.zeros((b, max_decode_len, c.num_heads, head_dim), c.dtype)
    cache = {}
    for layer in self.layers:
      cross_key, cross_value = layer.cross_key_value(encoded)
      cache[layer.name] = dict(self_key=empty, self_value=empty, cross_key=cross_key,
                               cross_value=cross_value)
    return cache

  def decode_step(self, cache, tokens, step):
    """``tokens [B, 1]`` fed at position ``step`` -> ``(logits [B, V], new cache)``."""
    max_decode_len = cache[self.layers[0].name]["self_key"].shape[1]
    x = self._embed(tokens, jnp.reshape(step, (1,)))
    self_mask = (jnp.arange(max_decode_len) <= step)[None, None, None, :]
    new_cache = {}
    for layer in self.layers:
      layer_cache = cache[layer.name]
      x, (key, value) = layer.step(x, layer_cache, step, self_mask)
      new_cache[layer.name] = dict(layer_cache, self_key=key, self_value=value)
    return self._logits(x)[:, 0], new_cache
