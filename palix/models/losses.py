"""Token-level losses with t5x's semantics: label smoothing, z-loss and loss weights."""

import jax
import jax.numpy as jnp


def cross_entropy_with_z_loss(logits, targets, *, label_smoothing=0.0, z_loss=0.0):
  """Per-token ``(total_loss, z_loss_term)`` for ``logits [..., V]`` and int ``targets [...]``.

  With label smoothing the target distribution puts ``1 - ls`` on the target and spreads ``ls``
  over the other ``V - 1`` classes; the entropy of that distribution is subtracted so a perfect
  prediction scores 0, as in t5x. The z-loss term ``z_loss * logsumexp(logits)**2`` keeps the
  softmax normaliser near 1 (PaLM).
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
  soft = jax.nn.one_hot(targets, vocab, dtype=jnp.float32) * (confidence - low) + low
  log_z = jax.nn.logsumexp(logits, axis=-1)
  ce = log_z - jnp.sum(soft * logits, axis=-1) - normalizer
  z_term = z_loss * jnp.square(log_z)
  return ce + z_term, z_term


def ordinal_cross_entropy(logits, targets, *, first_id: int, num_bins: int, sigma: float):
  """Per-token cross-entropy against a Gaussian over neighbouring ordinal bins, and a mask.

  For targets in ``[first_id, first_id + num_bins)`` (location tokens: bins of a coordinate) the
  target distribution is ``q_j ~ exp(-(j - bin)^2 / (2 sigma^2))`` over the bins, so a prediction
  one bin off is nearly right and every box teaches its neighbourhood; a one-hot target gives no
  signal about which wrong bins are close. The entropy of ``q`` is subtracted (a prediction equal
  to ``q`` scores 0). Returns ``(loss, is_ordinal)``; ``loss`` is meaningful where ``is_ordinal``.
  """
  logits = logits.astype(jnp.float32)
  bins = targets - first_id
  is_ordinal = (bins >= 0) & (bins < num_bins)
  offsets = jnp.arange(num_bins, dtype=jnp.float32) - bins[..., None].astype(jnp.float32)
  log_q = jax.nn.log_softmax(-0.5 * jnp.square(offsets / sigma), axis=-1)
  entropy = -jnp.sum(jnp.exp(log_q) * log_q, axis=-1)
  log_p = logits[..., first_id:first_id + num_bins] - jax.nn.logsumexp(logits, axis=-1)[..., None]
  return -jnp.sum(jnp.exp(log_q) * log_p, axis=-1) - entropy, is_ordinal


def token_cross_entropy(logits, targets, *, label_smoothing=0.0, z_loss=0.0, ordinal_bins=None):
  """Per-token ``(loss, z_loss_term)``: :func:`cross_entropy_with_z_loss`, with the Gaussian
  targets of :func:`ordinal_cross_entropy` for the ``ordinal_bins`` tokens when given."""
  token_loss, token_z = cross_entropy_with_z_loss(
      logits, targets, label_smoothing=label_smoothing, z_loss=z_loss)
  if ordinal_bins is not None:
    first_id, num_bins, sigma = ordinal_bins
    ordinal, is_ordinal = ordinal_cross_entropy(logits, targets, first_id=first_id,
                                                num_bins=num_bins, sigma=sigma)
    token_loss = jnp.where(is_ordinal, ordinal + token_z, token_loss)
  return token_loss, token_z


def example_sums(values, segment_ids=None, num_segments=None):
  """Per-example sums of per-token ``values [B, L]``: ``[B]`` (one example per row), or with
  packed rows (``segment_ids [B, L]``, 1..num_segments, 0 = padding) ``[B, num_segments]``."""
  if segment_ids is None:
    return values.sum(-1)
  one_hot = jax.nn.one_hot(segment_ids - 1, num_segments, dtype=values.dtype)  # 0 -> all zeros
  return jnp.einsum("bl,bls->bs", values, one_hot)


def weighted_cross_entropy_loss(logits, targets, weights, *, label_smoothing=0.0, z_loss=0.0,
                                normalization="tokens", ordinal_bins=None, segment_ids=None,
                                num_segments=None):
  """Scalar loss and metrics. ``normalization``: mean per real token, or per sequence.

  ``ordinal_bins``: ``(first_id, num_bins, sigma)`` gives those targets the Gaussian targets of
  :func:`ordinal_cross_entropy` (in place of one-hot and label smoothing). Packed rows give
  ``segment_ids`` and ``num_segments`` (:func:`example_sums`): a sequence is then one segment.
  """
  weights = weights.astype(jnp.float32)
  token_loss, token_z = token_cross_entropy(logits, targets, label_smoothing=label_smoothing,
                                            z_loss=z_loss, ordinal_bins=ordinal_bins)
  num_tokens = weights.sum()
  denom = jnp.maximum(num_tokens, 1.0)
  sequence_weights = example_sums(weights, segment_ids, num_segments)
  if normalization == "tokens":
    loss = (token_loss * weights).sum() / denom
  else:
    per_seq = (example_sums(token_loss * weights, segment_ids, num_segments)
               / jnp.maximum(sequence_weights, 1.0))
    if segment_ids is None:
      loss = per_seq.mean()
    else:  # the mean over the segments present (a packed row has empty slots)
      present = (sequence_weights > 0).astype(jnp.float32)
      loss = (per_seq * present).sum() / jnp.maximum(present.sum(), 1.0)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = {
      "loss": loss,
      "cross_ent_loss": ((token_loss - token_z) * weights).sum() / denom,
      "z_loss": (token_z * weights).sum() / denom,
      "accuracy": (correct * weights).sum() / denom,
      "num_tokens": num_tokens,
      "num_examples": (jnp.asarray(targets.shape[0], jnp.float32) if segment_ids is None
                       else (sequence_weights > 0).sum().astype(jnp.float32)),
  }
  return loss, metrics
