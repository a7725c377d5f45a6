"""Choosing the next token from logits: argmax, or temperature sampling with top-k then top-p.

The order of operations for sampling is fixed and documented (docs/decoding.md):

1. divide the logits by the temperature;
2. top-k: keep the ``top_k`` largest (``top_k=0`` keeps all);
3. top-p (nucleus): renormalise the kept tokens, sort them by probability and keep the shortest
   prefix whose mass reaches ``top_p`` (the most likely token is always kept);
4. sample from the renormalised survivors.

A temperature of 0 (per row, when it is an array) takes the argmax of the raw logits.
"""

from typing import Any

import jax
import jax.numpy as jnp

Array = Any


def check_sampling_options(top_k: int, top_p: float):
  """Validates the static sampling options with a clear message."""
  if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
    raise ValueError(f"top_k must be an int >= 0 (0 disables top-k), got {top_k!r}")
  if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be a float in (0, 1] (1 disables top-p), got {top_p!r}")


def _top_k_top_p_candidates(logits: Array, top_k: int, top_p: float):
  """The surviving candidates: ``(logits [B, C], token ids [B, C])``, dropped ones at -inf."""
  vocab = logits.shape[-1]
  k = vocab if top_k == 0 else min(top_k, vocab)
  values, ids = jax.lax.top_k(logits, k)  # sorted, largest first
  if top_p < 1.0:
    probs = jax.nn.softmax(values, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    values = jnp.where(mass_before < top_p, values, -jnp.inf)
  return values, ids


def forbid_eos_before(logits: Array, step, eos_id: int, min_new_tokens) -> Array:
  """``logits`` with EOS at -inf while ``step < min_new_tokens`` (Hugging Face's
  ``MinNewTokensLengthLogitsProcessor``); unchanged, and no extra op, for ``min_new_tokens=0``."""
  if isinstance(min_new_tokens, int) and min_new_tokens == 0:
    return logits
  is_eos = jnp.arange(logits.shape[-1]) == eos_id
  return jnp.where(is_eos & (step < min_new_tokens), -jnp.inf, logits)


def select_tokens(logits: Array, *, rng=None, temperature=1.0, top_k: int = 0,
                  top_p: float = 1.0, greedy: bool = False) -> Array:
  """Next tokens ``[B]`` int32 from ``logits [B, V]`` (float32).

  Args:
    logits: raw model logits.
    rng: PRNG key (unused when ``greedy``).
    temperature: scalar or ``[B]``; rows with temperature <= 0 take the argmax.
    top_k: static; 0 disables.
    top_p: static; 1.0 disables.
    greedy: static; argmax for every row (no randomness at all).
  """
  argmax = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if greedy:
    return argmax
  temperature = jnp.asarray(temperature, jnp.float32)
  per_row = temperature if temperature.ndim == 0 else temperature[:, None]
  scaled = logits / jnp.where(per_row > 0, per_row, 1.0)
  if top_k == 0 and top_p >= 1.0:
    sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
  else:
    values, ids = _top_k_top_p_candidates(scaled, top_k, top_p)
    choice = jax.random.categorical(rng, values, axis=-1)
    sampled = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, argmax)


def token_logprobs(logits: Array, tokens: Array) -> Array:
  """``log_softmax(logits)[tokens]``: the chosen tokens' log-probabilities under the raw model."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
