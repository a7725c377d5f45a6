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


def weighted_cross_entropy_loss(logits, targets, weights, *, label_smoothing=0.0, z_loss=0.0,
                                normalization="tokens"):
  """Scalar loss and metrics. ``normalization``: mean per real token, or per sequence."""
  weights = weights.astype(jnp.float32)
  token_loss, token_z = cross_entropy_with_z_loss(
      logits, targets, label_smoothing=label_smoothing, z_loss=z_loss)
  num_tokens = weights.sum()
  if normalization == "tokens":
    denom = jnp.maximum(num_tokens, 1.0)
    loss = (token_loss * weights).sum() / denom
  else:
    per_seq = (token_loss * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)
    loss = per_seq.mean()
    denom = jnp.maximum(num_tokens, 1.0)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = {
      "loss": loss,
      "cross_ent_loss": ((token_loss - token_z) * weights).sum() / denom,
      "z_loss": (token_z * weights).sum() / denom,
      "accuracy": (correct * weights).sum() / denom,
      "num_tokens": num_tokens,
      "num_examples": jnp.asarray(targets.shape[0], jnp.float32),
  }
  return loss, metrics
