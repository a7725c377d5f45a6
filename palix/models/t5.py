"""T5.1.1 / UL2 text encoder-decoder: the language half of PaLI-X.

T5.1.1 (Raffel et al. 2020, v1.1 recipe) and UL2 share one architecture: RMS ("T5") LayerNorm,
bucketed relative position bias (one table per stack), gated MLP (GELU for T5.1.1, SiLU for UL2),
no biases, attention logits not scaled, untied output logits. ``T5Config`` picks the sizes.

``T5EncoderDecoder`` is built to be driven piece by piece (``module.apply(..., method=...)``):

* ``embed(tokens)`` -> ``[B, L, D]`` (the shared token embedding);
* ``encode(input_embeds, input_mask, positions=None)`` works on embeddings so that PaLI-X can put
  visual tokens in front of the text; relative positions run over the whole concatenated sequence
  (``0..Le-1``, or the per-example ``positions`` given);
* ``decode(encoded, encoder_mask, decoder_input_tokens)`` -> float32 logits (teacher forcing);
* packed rows (several examples per row, T5X's packing): ``encode(..., segment_ids=...)`` and
  ``decode(..., decoder_segment_ids=..., decoder_positions=..., encoder_segment_ids=...)`` keep
  attention within a segment and count relative positions per segment, so every example gets
  what it gets alone;
* ``init_decode_cache`` / ``decode_step`` for autoregressive decoding. The cache is a plain dict
  whose every array has batch as axis 0 and the step index is an explicit argument, so beam search
  can gather or reshape it freely. Decoding ``step = 0 .. T-1`` reproduces ``decode``.
"""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

# Re-exported: callers import the config and the activations from here.
from palix.models.t5_config import ACTIVATIONS, T5Config, gelu_tanh, silu  # noqa: F401
from palix.models.t5_stack import Decoder, Encoder


def _shape_error(argument: str, expected: str, got) -> ValueError:
  return ValueError(f"T5EncoderDecoder: {argument} must have shape {expected}; got shape "
                    f"{tuple(got.shape)}")


class T5EncoderDecoder(nn.Module):
  """T5.1.1 / UL2 encoder-decoder. See the module docstring for the methods and their contract."""
  config: T5Config

  def setup(self):
    c = self.config.validate()
    self.token_embedder = nn.Embed(
        c.vocab_size, c.emb_dim, dtype=c.compute_dtype, param_dtype=c.params_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ("vocab", "embed")),
        name="token_embedder")
    self.encoder = Encoder(c, name="encoder")
    self.decoder = Decoder(c, name="decoder")
    if not c.logits_via_embedding:
      self.logits_dense = nn.DenseGeneral(
          c.vocab_size, use_bias=False, dtype=c.compute_dtype, param_dtype=c.params_dtype,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
              ("embed", "vocab")),
          name="logits_dense")

  # --- pieces -------------------------------------------------------------------------------------

  def embed(self, tokens):
    """Token ids ``[B, L]`` -> embeddings ``[B, L, D]`` (compute dtype)."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
      raise _shape_error("tokens", "[batch, length]", tokens)
    x = self.token_embedder(tokens.astype(jnp.int32))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def encode(self, input_embeds, input_mask, *, positions=None, segment_ids=None,
             deterministic: bool = True):
    """Embeddings ``[B, Le, D]`` and mask ``[B, Le]`` (0 = padding) -> encoded ``[B, Le, D]``.

    ``positions`` (optional int ``[B, Le]``, default ``0..Le-1`` for every example) are what the
    relative position bias sees; PaLI-X passes ``cumsum(mask) - 1`` so that masked-out image slots
    do not shift the text. Padded keys are masked whatever their position. ``segment_ids``
    (optional int ``[B, Le]``, 0 = padding) restrict attention to a token's own segment (packed
    rows; give per-segment ``positions`` with them).
    """
    d = self.config.emb_dim
    input_embeds, input_mask = jnp.asarray(input_embeds), jnp.asarray(input_mask)
    if input_embeds.ndim != 3 or input_embeds.shape[-1] != d:
      raise _shape_error("input_embeds", f"[batch, length, {d}]", input_embeds)
    if tuple(input_mask.shape) != tuple(input_embeds.shape[:2]):
      raise _shape_error("input_mask", f"[batch, length] = {tuple(input_embeds.shape[:2])} "
                         "(that of input_embeds)", input_mask)
    if positions is not None:
      if tuple(jnp.shape(positions)) != tuple(input_embeds.shape[:2]):
        raise _shape_error("positions", f"[batch, length] = {tuple(input_embeds.shape[:2])} "
                           "(that of input_embeds)", positions)
      positions = jnp.asarray(positions).astype(jnp.int32)
    if segment_ids is not None:
      if tuple(jnp.shape(segment_ids)) != tuple(input_embeds.shape[:2]):
        raise _shape_error("segment_ids", f"[batch, length] = {tuple(input_embeds.shape[:2])} "
                           "(that of input_embeds)", segment_ids)
      segment_ids = jnp.asarray(segment_ids).astype(jnp.int32)
    return self.encoder(input_embeds, input_mask, deterministic=deterministic,
                        positions=positions, segment_ids=segment_ids)

  def decode(self, encoded, encoder_mask, decoder_input_tokens, *, decoder_segment_ids=None,
             decoder_positions=None, encoder_segment_ids=None, deterministic: bool = True):
    """Teacher forcing: ``decoder_input_tokens [B, Ld]`` -> logits ``[B, Ld, V]`` (float32).

    Packed targets give ``decoder_segment_ids`` and ``decoder_positions`` ``[B, Ld]`` and the
    ``encoder_segment_ids`` ``[B, Le]`` of the rows they were encoded with.
    """
    encoded, encoder_mask = jnp.asarray(encoded), jnp.asarray(encoder_mask)
    decoder_input_tokens = jnp.asarray(decoder_input_tokens)
    self._check_encoded(encoded, encoder_mask)
    if decoder_input_tokens.ndim != 2 or decoder_input_tokens.shape[0] != encoded.shape[0]:
      raise _shape_error("decoder_input_tokens", f"[batch={encoded.shape[0]}, length]",
                         decoder_input_tokens)
    for name, value, like in (("decoder_segment_ids", decoder_segment_ids, decoder_input_tokens),
                              ("decoder_positions", decoder_positions, decoder_input_tokens),
                              ("encoder_segment_ids", encoder_segment_ids, encoder_mask)):
      if value is not None and tuple(jnp.shape(value)) != tuple(like.shape):
        raise _shape_error(name, f"{tuple(like.shape)}", value)
    y = self.embed(decoder_input_tokens)
    y = self.decoder(y, encoded, encoder_mask, deterministic=deterministic,
                     segment_ids=decoder_segment_ids, positions=decoder_positions,
                     encoder_segment_ids=encoder_segment_ids)
    return self._logits(y)

  def init_decode_cache(self, encoded, encoder_mask, max_decode_len: int):
    """Cache for ``decode_step``: a dict of arrays, batch first.

    ``encoder_mask [B, Le]`` (bool), ``cross_key``/``cross_value [B, layers, Le, H, Dh]`` (computed
    here, once), ``self_key``/``self_value [B, layers, max_decode_len, H, Dh]`` (zeros).
    """
    encoded, encoder_mask = jnp.asarray(encoded), jnp.asarray(encoder_mask)
    self._check_encoded(encoded, encoder_mask)
    if not isinstance(max_decode_len, int) or max_decode_len < 1:
      raise ValueError(f"T5EncoderDecoder.init_decode_cache: max_decode_len must be a positive "
                       f"Python int (static under jit); got {max_decode_len!r}")
    return self.decoder.init_cache(encoded, encoder_mask, max_decode_len)

  def decode_step(self, cache, tokens, step, *, deterministic: bool = True):
    """One decoding step: ``tokens [B, 1]`` at position ``step`` -> ``(logits [B, V] f32, cache)``.

    ``step`` is the 0-based position being written (an int32 scalar, the same for the whole
    batch). Positions after ``step`` in the cache are ignored, so a cache can be reused from any
    step. Under ``jit`` a ``step >= max_decode_len`` cannot be detected (XLA clamps the write).
    """
    batch, max_len = cache["self_key"].shape[0], cache["self_key"].shape[2]
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tuple(tokens.shape) != (batch, 1):
      raise _shape_error("tokens", f"[batch={batch}, 1]", tokens)
    if jnp.ndim(step) != 0:
      raise ValueError(f"T5EncoderDecoder.decode_step: step must be a scalar; got shape "
                       f"{jnp.shape(step)}")
    if isinstance(step, int) and not 0 <= step < max_len:
      raise ValueError(f"T5EncoderDecoder.decode_step: step {step} is outside the cache's "
                       f"max_decode_len {max_len}")
    y = self.embed(tokens)
    y, new_cache = self.decoder.step(y, cache, jnp.asarray(step, jnp.int32),
                                     deterministic=deterministic)
    return self._logits(y)[:, 0], new_cache

  def __call__(self, encoder_input_tokens, decoder_input_tokens, *, deterministic: bool = True):
    """Text only: ``embed -> encode(mask = tokens > 0) -> decode``; logits ``[B, Ld, V]``."""
    encoder_input_tokens = jnp.asarray(encoder_input_tokens)
    encoded = self.encode(self.embed(encoder_input_tokens), encoder_input_tokens > 0,
                          deterministic=deterministic)
    return self.decode(encoded, encoder_input_tokens > 0, decoder_input_tokens,
                       deterministic=deterministic)

  # --- helpers ------------------------------------------------------------------------------------

  def _check_encoded(self, encoded, encoder_mask):
    d = self.config.emb_dim
    if encoded.ndim != 3 or encoded.shape[-1] != d:
      raise _shape_error("encoded", f"[batch, length, {d}]", encoded)
    if tuple(encoder_mask.shape) != tuple(encoded.shape[:2]):
      raise _shape_error("encoder_mask", f"[batch, length] = {tuple(encoded.shape[:2])} "
                         "(that of encoded)", encoder_mask)

  def _logits(self, y):
    if self.config.logits_via_embedding:
      logits = self.token_embedder.attend(y * (self.config.emb_dim ** -0.5))
    else:
      logits = self.logits_dense(y)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32)


@gin.configurable
class T5Spec:
  """A T5 as a stand-alone model spec (``module`` + ``example_inputs``) for ``palix params``."""

  def __init__(self, config: T5Config = gin.REQUIRED, encoder_length: int = 512,
               decoder_length: int = 128):
    self.config = config.validate()
    self.module = T5EncoderDecoder(self.config)
    self.encoder_length = encoder_length
    self.decoder_length = decoder_length

  def example_inputs(self, batch_size: int = 1):
    return {
        "encoder_input_tokens": jax.ShapeDtypeStruct((batch_size, self.encoder_length), jnp.int32),
        "decoder_input_tokens": jax.ShapeDtypeStruct((batch_size, self.decoder_length), jnp.int32),
    }
