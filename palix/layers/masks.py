"""Attention masks built from segment ids.

Convention used everywhere in palix: ``segment_ids`` is an int array ``[batch, length]`` where 0 marks
padding and each positive id marks one packed sequence (one image for NaViT-style packing, one text
for packed text). A query attends to a key only when both are real and belong to the same segment.
Masks are boolean and shaped ``[batch, 1, q_len, kv_len]`` so they broadcast over heads, which is the
layout ``jax.nn.dot_product_attention`` expects.
"""

import jax.numpy as jnp


def segment_mask(q_segment_ids, kv_segment_ids=None):
  """Boolean ``[B, 1, Q, K]`` mask: same segment and neither side padding."""
  if kv_segment_ids is None:
    kv_segment_ids = q_segment_ids
  q = q_segment_ids[:, :, None]
  k = kv_segment_ids[:, None, :]
  return ((q == k) & (q > 0) & (k > 0))[:, None, :, :]


def padding_mask(q_valid, kv_valid):
  """Boolean ``[B, 1, Q, K]`` mask from two ``[B, len]`` validity arrays (cross attention)."""
  return (q_valid[:, :, None].astype(bool) & kv_valid[:, None, :].astype(bool))[:, None]


def causal_mask(length, dtype=bool):
  """Lower-triangular ``[1, 1, L, L]`` mask: position i sees positions <= i."""
  return jnp.tril(jnp.ones((length, length), dtype))[None, None]
