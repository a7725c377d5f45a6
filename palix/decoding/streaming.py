"""Token-by-token decoding as a Python iterator, for interactive use.

Each step is one call of a jitted single-step function (compiled once; the step index is traced),
followed by a device-to-host copy of the chosen tokens. It runs the same step as
:func:`palix.decoding.temperature_sample` (same random key per step), so the concatenated stream
equals the batch decoder's tokens for the same arguments.

A Python loop has no outer program to be jitted in, so the step is jitted here: the one ``jit``
of ``palix.decoding``. The model step crosses it as a ``jax.tree_util.Partial``: pass
``jax.tree_util.Partial(step_fn, params)`` and the parameters are traced arguments (a new
``params`` reuses the compiled step). Any other callable is wrapped in an argument-free
``Partial``: correct, but whatever arrays it closes over become constants of the compiled step.
"""

from typing import Any, Callable, Iterator, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from palix.decoding import sampling

Array = Any

_sample_step = jax.jit(
    sampling.sample_step,
    static_argnames=("batch_size", "eos_id", "top_k", "top_p", "greedy"))


def _as_partial(tokens_to_logits: Callable) -> jax.tree_util.Partial:
  if isinstance(tokens_to_logits, jax.tree_util.Partial):
    return tokens_to_logits
  if not callable(tokens_to_logits):
    raise TypeError(f"tokens_to_logits must be callable, got {type(tokens_to_logits).__name__}")
  return jax.tree_util.Partial(tokens_to_logits)


def stream_sample(tokens_to_logits: Callable, cache, *, batch_size: int,
                  max_decode_len: Optional[int] = None, eos_id: int = 1, bos_id: int = 0,
                  rng: Optional[Array] = None, temperature=1.0, top_k: int = 0,
                  top_p: float = 1.0, greedy: bool = False, min_new_tokens: int = 0,
                  max_new_tokens: Optional[int] = None) -> Iterator[Union[np.ndarray, int]]:
  """Yields each step's tokens as soon as they are chosen (arguments as ``temperature_sample``).

  Yields a ``[B]`` int32 numpy array per step, or a Python ``int`` when ``batch_size == 1``.
  Finished rows yield 0. The iterator stops after the step in which the last row emits EOS, or
  after ``max_decode_len`` steps. Arguments are checked when this is called, not at the first
  ``next``.
  """
  max_decode_len = sampling.decode_length(max_decode_len, max_new_tokens)
  sampling.check_decode_args(cache, batch_size, max_decode_len, min_new_tokens)
  rng, temperature, greedy = sampling.resolve_sampling(rng, temperature, top_k, top_p, greedy)
  options = dict(batch_size=int(batch_size), eos_id=int(eos_id), top_k=0 if greedy else top_k,
                 top_p=1.0 if greedy else float(top_p), greedy=greedy)
  return _stream(_as_partial(tokens_to_logits), cache, rng, temperature, options,
                 max_decode_len, bos_id, jnp.int32(min_new_tokens))


def _stream(step_fn, cache, rng, temperature, options, max_decode_len, bos_id, min_new_tokens):
  batch_size = options["batch_size"]
  last = jnp.full((batch_size,), bos_id, jnp.int32)
  done = jnp.zeros((batch_size,), bool)
  for step in range(max_decode_len):
    last, _, cache, done = _sample_step(step_fn, cache, last, jnp.int32(step), done, rng,
                                        temperature, min_new_tokens=min_new_tokens, **options)
    tokens = np.asarray(last)
    yield int(tokens[0]) if batch_size == 1 else tokens
    if np.all(np.asarray(done)):
      return


def stream_greedy(tokens_to_logits: Callable, cache, *, batch_size: int,
                  max_decode_len: Optional[int] = None, eos_id: int = 1, bos_id: int = 0,
                  min_new_tokens: int = 0,
                  max_new_tokens: Optional[int] = None) -> Iterator[Union[np.ndarray, int]]:
  """Argmax decoding as an iterator; the concatenated stream equals :func:`greedy`'s tokens."""
  return stream_sample(tokens_to_logits, cache, batch_size=batch_size,
                       max_decode_len=max_decode_len, eos_id=eos_id, bos_id=bos_id, greedy=True,
                       min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens)
