"""Greedy decoding and temperature sampling (top-k then top-p) in one ``lax.while_loop``.

The model is reached only through ``tokens_to_logits(cache, tokens [B, 1], step) ->
(logits [B, V], new_cache)``, where every cache leaf has the batch as axis 0. Step ``i`` feeds the
token chosen at step ``i - 1`` (BOS at step 0) and chooses output token ``i``.

The decoders are pure functions, as t5x's ``decoding.py``: the caller jits once at its edge, with
the parameters as arguments of its own function (``PaliXModel.predict_batch_with_aux`` does).
Called outside ``jit`` they still work, compiling the loop on every call.

Rows never interact: a row's tokens depend only on its own logits (and, when sampling, on the
random key and the batch layout), so greedy decoding of an example gives the same tokens alone or
in any batch.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from palix.decoding import cache_utils
from palix.decoding import token_selection

Array = Any


class DecodeResult(NamedTuple):
  """Output of :func:`temperature_sample` and :func:`greedy`.

  Attributes:
    tokens: ``[B, L]`` int32, without BOS; EOS included; 0 after EOS.
    logprobs: ``[B, L]`` float32, ``log_softmax(raw logits)[token]`` for each emitted token (not
      affected by temperature, top-k or top-p); 0 after EOS.
    lengths: ``[B]`` int32, number of emitted tokens including EOS (``L`` if no EOS).
  """
  tokens: Array
  logprobs: Array
  lengths: Array


def decode_length(max_decode_len: Optional[int], max_new_tokens: Optional[int],
                  default: Optional[int] = None) -> int:
  """The number of decoding steps from ``max_decode_len`` or its alias ``max_new_tokens`` (the
  Hugging Face name: the answer's tokens, EOS included; there is no prompt in the output), else
  ``default``."""
  if max_decode_len is not None and max_new_tokens is not None and max_decode_len != max_new_tokens:
    raise ValueError(f"max_new_tokens={max_new_tokens} and max_decode_len={max_decode_len} are "
                     "the same setting; give one")
  length = next((x for x in (max_decode_len, max_new_tokens, default) if x is not None), None)
  if length is None:
    raise ValueError("give max_decode_len (or its alias max_new_tokens)")
  return length


def check_decode_args(cache, batch_size: int, max_decode_len: int, min_new_tokens=0):
  if not isinstance(max_decode_len, (int, np.integer)) or max_decode_len < 1:
    raise ValueError(f"max_decode_len must be a positive int, got {max_decode_len!r}")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if isinstance(min_new_tokens, (int, np.integer)) and min_new_tokens < 0:
    raise ValueError(f"min_new_tokens must be >= 0, got {min_new_tokens!r}")
  cache_utils.check_batch_axis(cache, batch_size)


def call_model(tokens_to_logits, cache, tokens, step, batch_size: int):
  """Calls the model step; checks the logits' shape and that the cache keeps its structure."""
  logits, new_cache = tokens_to_logits(cache, tokens, step)
  if logits.ndim != 2 or logits.shape[0] != batch_size:
    raise ValueError(f"tokens_to_logits must return logits [batch={batch_size}, vocab], got "
                     f"shape {tuple(logits.shape)}")
  cache_utils.check_same_structure(cache, new_cache)
  return logits.astype(jnp.float32), new_cache


def sample_step(tokens_to_logits, cache, last_tokens, step, done, rng, temperature, *,
                batch_size: int, eos_id: int, top_k: int, top_p: float, greedy: bool,
                min_new_tokens=0):
  """One decoding step shared by the loop and the streaming iterator.

  Returns ``(tokens [B], logprobs [B], new_cache, new_done)``; finished rows emit 0 with logprob 0.
  The step's random key is ``fold_in(rng, step)``, so a step's draw does not depend on how many
  steps ran before it in the same call. Before step ``min_new_tokens`` EOS cannot be chosen; the
  log-probabilities stay those of the unmodified model.
  """
  logits, new_cache = call_model(tokens_to_logits, cache, last_tokens[:, None], step, batch_size)
  key = None if greedy else jax.random.fold_in(rng, step)
  selectable = token_selection.forbid_eos_before(logits, step, eos_id, min_new_tokens)
  chosen = token_selection.select_tokens(selectable, rng=key, temperature=temperature,
                                         top_k=top_k, top_p=top_p, greedy=greedy)
  logp = token_selection.token_logprobs(logits, chosen)
  chosen = jnp.where(done, 0, chosen)
  logp = jnp.where(done, 0.0, logp)
  return chosen, logp, new_cache, done | (chosen == eos_id)


class _LoopState(NamedTuple):
  step: Array
  cache: Any
  last: Array
  done: Array
  tokens: Array
  logprobs: Array
  lengths: Array


def _decode_loop(tokens_to_logits, cache, rng, temperature, *, batch_size, max_decode_len,
                 eos_id, bos_id, top_k, top_p, greedy, min_new_tokens):
  def cond(state):
    return (state.step < max_decode_len) & ~jnp.all(state.done)

  def body(state):
    chosen, logp, cache, done = sample_step(
        tokens_to_logits, state.cache, state.last, state.step, state.done, rng, temperature,
        batch_size=batch_size, eos_id=eos_id, top_k=top_k, top_p=top_p, greedy=greedy,
        min_new_tokens=min_new_tokens)
    return _LoopState(
        step=state.step + 1, cache=cache, last=chosen, done=done,
        tokens=state.tokens.at[:, state.step].set(chosen),
        logprobs=state.logprobs.at[:, state.step].set(logp),
        lengths=state.lengths + (~state.done).astype(jnp.int32))

  init = _LoopState(
      step=jnp.zeros((), jnp.int32), cache=cache,
      last=jnp.full((batch_size,), bos_id, jnp.int32),
      done=jnp.zeros((batch_size,), bool),
      tokens=jnp.zeros((batch_size, max_decode_len), jnp.int32),
      logprobs=jnp.zeros((batch_size, max_decode_len), jnp.float32),
      lengths=jnp.zeros((batch_size,), jnp.int32))
  final = jax.lax.while_loop(cond, body, init)
  return DecodeResult(final.tokens, final.logprobs, final.lengths)


def resolve_sampling(rng, temperature, top_k, top_p, greedy):
  """Validates the sampling options; returns ``(rng, temperature, greedy)`` ready for the loop."""
  token_selection.check_sampling_options(top_k, top_p)
  if isinstance(temperature, (int, float)):
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    greedy = greedy or temperature == 0
  if greedy:
    return jnp.zeros((2,), jnp.uint32), jnp.zeros((), jnp.float32), True
  if rng is None:
    raise ValueError("sampling needs an rng (a jax.random key); pass greedy=True or temperature=0 "
                     "for argmax decoding")
  return rng, jnp.asarray(temperature, jnp.float32), False


def temperature_sample(tokens_to_logits: Callable, cache, *, batch_size: int,
                       max_decode_len: Optional[int] = None, eos_id: int = 1, bos_id: int = 0,
                       rng: Optional[Array] = None, temperature=1.0, top_k: int = 0,
                       top_p: float = 1.0, greedy: bool = False, min_new_tokens=0,
                       max_new_tokens: Optional[int] = None) -> DecodeResult:
  """Samples ``max_decode_len`` tokens per row (fewer if every row emits EOS first).

  Args:
    tokens_to_logits: ``(cache, tokens [B, 1] int32, step int32) -> (logits [B, V], new_cache)``,
      e.g. a ``functools.partial`` of the module's ``apply`` with the parameters; inside the
      caller's ``jit`` they are traced, outside they are constants of the compiled loop.
    cache: pytree, every leaf ``[B, ...]``; the state for step 0.
    batch_size: ``B``.
    max_decode_len: static number of steps ``L`` (alias: ``max_new_tokens``).
    eos_id: a row stops after emitting it; -1 (never emitted) forces ``L`` tokens.
    min_new_tokens: EOS cannot be chosen before this many tokens (Hugging Face's
      ``generate(min_new_tokens=...)``); may be traced.
    bos_id: the token fed at step 0 (T5: 0).
    rng: a ``jax.random`` key; required unless decoding greedily. Same key, same output.
    temperature: >= 0; a scalar or a ``[B]`` array; 0 means argmax (per row for an array).
    top_k: keep the ``top_k`` most likely tokens (0: all). Applied before ``top_p``.
    top_p: nucleus mass in (0, 1] over the top-k survivors (1: no truncation).
    greedy: argmax decoding (ignores ``rng``, ``temperature``, ``top_k``, ``top_p``).

  Returns:
    A :class:`DecodeResult`; ``logprobs`` are under the *unmodified* model distribution.
  """
  max_decode_len = decode_length(max_decode_len, max_new_tokens)
  check_decode_args(cache, batch_size, max_decode_len, min_new_tokens)
  rng, temperature, greedy = resolve_sampling(rng, temperature, top_k, top_p, greedy)
  return _decode_loop(
      tokens_to_logits, cache, rng, temperature, batch_size=int(batch_size),
      max_decode_len=int(max_decode_len), eos_id=int(eos_id), bos_id=int(bos_id),
      top_k=0 if greedy else top_k, top_p=1.0 if greedy else float(top_p), greedy=greedy,
      min_new_tokens=min_new_tokens)


def greedy(tokens_to_logits: Callable, cache, *, batch_size: int,
           max_decode_len: Optional[int] = None, eos_id: int = 1, bos_id: int = 0,
           rng: Optional[Array] = None, min_new_tokens=0,
           max_new_tokens: Optional[int] = None) -> DecodeResult:
  """Argmax decoding; ``temperature_sample(..., greedy=True)``. ``rng`` is accepted and unused."""
  del rng  # a uniform decode_fn signature: callers may pass one
  return temperature_sample(tokens_to_logits, cache, batch_size=batch_size,
                            max_decode_len=max_decode_len, eos_id=eos_id, bos_id=bos_id,
                            greedy=True, min_new_tokens=min_new_tokens,
                            max_new_tokens=max_new_tokens)
