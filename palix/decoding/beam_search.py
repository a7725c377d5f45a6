"""Beam search with a length penalty, finished/alive bookkeeping and a KV-cache gathered by beam.

Algorithm (per example, ``K = beam_size``; everything is vectorised over the batch):

* Start with one alive hypothesis (BOS, log-probability 0); the cache row is repeated ``K`` times.
* Each step extends every alive hypothesis by every token and keeps the ``2K`` best candidates by
  summed log-probability (``2K`` so that ``K`` candidates survive even if ``K`` of them end).
* A candidate *ends* when its token is EOS or it reaches ``max_decode_len`` (a truncated hypothesis
  competes like a finished one). An ending candidate among the ``K`` best candidates is offered to
  the finished set with score ``sum_logprob / length_penalty(length, alpha)``; the finished set
  keeps the ``K`` best scores. Ending candidates ranked below ``K`` are dropped (they exist only so
  that ``K`` alive hypotheses remain).
* The ``K`` best non-ending candidates become the alive hypotheses; the cache rows are gathered
  accordingly.
* An example is *closed* (its finished set frozen) when it holds ``K`` finished hypotheses and
  either ``early_stopping`` is True, or no alive hypothesis can still beat the worst finished one
  (exact bound: log-probabilities only decrease, and the penalty is monotone in length, so the best
  reachable score is ``alive_sum / max(penalty(t + 2), penalty(max_decode_len))``). The loop
  ends when every example is closed or after ``max_decode_len`` steps.

With ``early_stopping=True`` (the default) this is the fairseq / Hugging Face
``generate(early_stopping=True)`` procedure, and ``beam_size=1`` is exactly greedy decoding. With
``early_stopping=False`` it is the exact-bound variant (t5x's stopping rule, Hugging Face's
``early_stopping="never"``); there ``beam_size=1`` equals greedy only for ``alpha=0``. Before step
``min_new_tokens`` no candidate may end with EOS (Hugging Face's ``min_new_tokens``).

A pure function, like ``palix.decoding.sampling``'s decoders: the caller jits it.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from palix.decoding import cache_utils
from palix.decoding.length_penalty import gnmt_length_penalty
from palix.decoding import token_selection
from palix.decoding.sampling import call_model, check_decode_args, decode_length

Array = Any


class BeamSearchResult(NamedTuple):
  """Output of :func:`beam_search`; hypotheses sorted best first (highest score first).

  Attributes:
    tokens: ``[B, L]`` the best hypothesis (no BOS, EOS included, 0 after it).
    logprobs: ``[B, L]`` its per-token ``log_softmax(raw logits)[token]``, 0 after EOS.
    lengths: ``[B]`` its length including EOS.
    scores: ``[B]`` its length-penalised score.
    all_tokens, all_logprobs: ``[B, K, L]`` every finished hypothesis.
    all_lengths, all_scores: ``[B, K]``. An empty slot (fewer than ``K`` hypotheses ever ended,
      possible only with a vocabulary smaller than about ``2K``) has score ``-inf`` and length 0.
  """
  tokens: Array
  logprobs: Array
  lengths: Array
  scores: Array
  all_tokens: Array
  all_logprobs: Array
  all_lengths: Array
  all_scores: Array


class _BeamState(NamedTuple):
  step: Array
  cache: Any               # flat [B * K, ...]
  alive_tokens: Array      # [B, K, L]
  alive_logprobs: Array    # [B, K, L]
  alive_sum: Array         # [B, K]; -inf for empty beams
  finished_tokens: Array   # [B, K, L]
  finished_logprobs: Array  # [B, K, L]
  finished_lengths: Array  # [B, K]
  finished_scores: Array   # [B, K]; -inf for empty slots
  closed: Array            # [B]


def _initial_state(cache, batch_size, beam_size, max_decode_len):
  shape = (batch_size, beam_size, max_decode_len)
  first_beam_only = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)
  return _BeamState(
      step=jnp.zeros((), jnp.int32),
      cache=cache_utils.repeat_batch(cache, beam_size),
      alive_tokens=jnp.zeros(shape, jnp.int32),
      alive_logprobs=jnp.zeros(shape, jnp.float32),
      alive_sum=jnp.broadcast_to(first_beam_only, (batch_size, beam_size)),
      finished_tokens=jnp.zeros(shape, jnp.int32),
      finished_logprobs=jnp.zeros(shape, jnp.float32),
      finished_lengths=jnp.zeros((batch_size, beam_size), jnp.int32),
      finished_scores=jnp.full((batch_size, beam_size), -jnp.inf, jnp.float32),
      closed=jnp.zeros((batch_size,), bool))


def _beam_step(tokens_to_logits, state: _BeamState, *, batch_size, beam_size, max_decode_len,
               alpha, eos_id, bos_id, length_penalty, early_stopping,
               min_new_tokens) -> _BeamState:
  b, k, t = batch_size, beam_size, state.step
  previous = jax.lax.dynamic_index_in_dim(state.alive_tokens, jnp.maximum(t - 1, 0), axis=2,
                                          keepdims=False)
  last = jnp.where(t == 0, bos_id, previous)
  logits, cache = call_model(tokens_to_logits, state.cache, last.reshape(b * k, 1), t, b * k)
  vocab = logits.shape[-1]
  # Raw log-probabilities (not renormalised without EOS, as in Hugging Face's beam search).
  logp = token_selection.forbid_eos_before(jax.nn.log_softmax(logits, axis=-1), t, eos_id,
                                           min_new_tokens).reshape(b, k * vocab)

  # The 2K best one-token extensions of the alive hypotheses.
  num_candidates = min(2 * k, k * vocab)
  cand_sum, cand_flat = jax.lax.top_k((state.alive_sum[:, :, None] + logp.reshape(b, k, vocab))
                                      .reshape(b, k * vocab), num_candidates)
  cand_beam, cand_token = cand_flat // vocab, (cand_flat % vocab).astype(jnp.int32)
  cand_token_logp = jnp.take_along_axis(logp, cand_flat, axis=1)
  cand_tokens = cache_utils.gather_along_beams(state.alive_tokens, cand_beam)
  cand_tokens = cand_tokens.at[:, :, t].set(cand_token)
  cand_logprobs = cache_utils.gather_along_beams(state.alive_logprobs, cand_beam)
  cand_logprobs = cand_logprobs.at[:, :, t].set(cand_token_logp)

  # Ending candidates among the K best are offered to the finished set.
  ends = (cand_token == eos_id) | (t == max_decode_len - 1)
  offered = (ends & (jnp.arange(num_candidates) < k)[None, :] & (cand_sum > -jnp.inf)
             & ~state.closed[:, None])
  cand_score = jnp.where(offered, cand_sum / length_penalty(t + 1, alpha), -jnp.inf)
  fin_scores, fin_idx = jax.lax.top_k(
      jnp.concatenate([state.finished_scores, cand_score], axis=1), k)
  pick = lambda old, new: cache_utils.gather_along_beams(jnp.concatenate([old, new], 1), fin_idx)
  fin_tokens = pick(state.finished_tokens, cand_tokens)
  fin_logprobs = pick(state.finished_logprobs, cand_logprobs)
  fin_lengths = pick(state.finished_lengths,
                     jnp.full((b, num_candidates), t + 1, jnp.int32))

  # The K best non-ending candidates stay alive; their cache rows follow them.
  alive_sum, alive_idx = jax.lax.top_k(jnp.where(ends, -jnp.inf, cand_sum), k)
  alive_tokens = cache_utils.gather_along_beams(cand_tokens, alive_idx)
  alive_logprobs = cache_utils.gather_along_beams(cand_logprobs, alive_idx)
  parent = jnp.take_along_axis(cand_beam, alive_idx, axis=1)
  cache = cache_utils.gather_beams(cache, parent, k)

  full = jnp.all(fin_scores > -jnp.inf, axis=1)
  if early_stopping:
    can_improve = ~full
  else:
    best_penalty = jnp.maximum(length_penalty(t + 2, alpha),
                               length_penalty(max_decode_len, alpha))
    can_improve = ~full | (alive_sum[:, 0] / best_penalty > fin_scores[:, k - 1])
  can_improve &= alive_sum[:, 0] > -jnp.inf
  return _BeamState(
      step=t + 1, cache=cache, alive_tokens=alive_tokens, alive_logprobs=alive_logprobs,
      alive_sum=alive_sum, finished_tokens=fin_tokens, finished_logprobs=fin_logprobs,
      finished_lengths=fin_lengths, finished_scores=fin_scores,
      closed=state.closed | ~can_improve)


def _beam_loop(tokens_to_logits, cache, *, batch_size, beam_size, max_decode_len, **options):
  state = _initial_state(cache, batch_size, beam_size, max_decode_len)
  state = jax.lax.while_loop(
      lambda s: (s.step < max_decode_len) & ~jnp.all(s.closed),
      lambda s: _beam_step(tokens_to_logits, s, batch_size=batch_size, beam_size=beam_size,
                           max_decode_len=max_decode_len, **options),
      state)
  return BeamSearchResult(
      tokens=state.finished_tokens[:, 0], logprobs=state.finished_logprobs[:, 0],
      lengths=state.finished_lengths[:, 0], scores=state.finished_scores[:, 0],
      all_tokens=state.finished_tokens, all_logprobs=state.finished_logprobs,
      all_lengths=state.finished_lengths, all_scores=state.finished_scores)


def beam_search(tokens_to_logits: Callable, cache, *, batch_size: int, beam_size: int,
                max_decode_len: Optional[int] = None, alpha: float = 0.6, eos_id: int = 1,
                bos_id: int = 0, length_penalty: Callable = gnmt_length_penalty,
                early_stopping: bool = True, rng: Optional[Array] = None, min_new_tokens=0,
                max_new_tokens: Optional[int] = None) -> BeamSearchResult:
  """Beam search over ``tokens_to_logits`` (see the module docstring for the exact procedure).

  Args:
    tokens_to_logits: ``(cache, tokens [N, 1] int32, step int32) -> (logits [N, V], new_cache)``;
      called with ``N = batch_size * beam_size``.
    cache: pytree, every leaf ``[batch_size, ...]``; repeated ``beam_size`` times internally and
      gathered along axis 0 by beam at every step.
    batch_size, beam_size, max_decode_len: static sizes (alias of ``max_decode_len``:
      ``max_new_tokens``).
    alpha: length-penalty exponent (0 disables the penalty); may be traced.
    eos_id, bos_id: end token; token fed at step 0.
    length_penalty: ``(length, alpha) -> penalty``; ``gnmt_length_penalty`` (t5x) or
      ``power_length_penalty`` (Hugging Face).
    early_stopping: close an example as soon as it has ``beam_size`` finished hypotheses (True),
      or only when no alive hypothesis can still beat them (False, exact).
    rng: accepted for a uniform decode-function signature; unused.
    min_new_tokens: no hypothesis ends with EOS before this many tokens; may be traced.

  Returns:
    A :class:`BeamSearchResult`, best hypothesis first.
  """
  del rng
  max_decode_len = decode_length(max_decode_len, max_new_tokens)
  check_decode_args(cache, batch_size, max_decode_len, min_new_tokens)
  if not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
    raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
  if isinstance(alpha, (int, float)) and not np.isfinite(alpha):
    raise ValueError(f"alpha must be finite, got {alpha!r}")
  return _beam_loop(
      tokens_to_logits, cache, batch_size=int(batch_size), beam_size=int(beam_size),
      max_decode_len=int(max_decode_len), alpha=jnp.asarray(alpha, jnp.float32),
      eos_id=int(eos_id), bos_id=int(bos_id), length_penalty=length_penalty,
      early_stopping=bool(early_stopping), min_new_tokens=min_new_tokens)
