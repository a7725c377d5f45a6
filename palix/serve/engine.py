"""One batched decode, step by step: prompts -> model inputs -> tokens per step for each row.

The prompts of a batch are stacked and padded to the next compiled batch size (``batch_sizes``:
each size is compiled once, so a server sees a handful of programs, not one per request count).
The encoder and the decode-cache set-up run as one jitted function; decoding is
:func:`palix.decoding.stream_sample`, which yields each step's tokens as soon as they are chosen.
Every decode uses the same cache length (``Limits.max_new_tokens``); a request that asks for fewer
tokens is finished by the caller.
"""

import bisect
import functools
from typing import Iterator, Sequence

import jax
import numpy as np

from palix import decoding
from palix.models import base
from palix.serve.request import CompletionRequest, DecodingOptions


class DecodeEngine:
  """Decodes prompts with a :class:`palix.generate.Generator`'s model and parameters.

  Args:
    generator: the model, its parameters and its prompt encoding.
    max_decode_len: the decode-cache length (the most tokens a request may ask for).
    batch_sizes: the batch sizes to compile; a batch of ``n`` prompts is padded to the smallest
      size ``>= n``, and ``max(batch_sizes)`` is the most prompts one decode takes.
  """

  def __init__(self, generator, max_decode_len: int, batch_sizes: Sequence[int] = (1, 2, 4, 8)):
    if not batch_sizes or min(batch_sizes) < 1:
      raise ValueError(f"batch_sizes must be positive integers; got {batch_sizes!r}")
    self.generator = generator
    self.model = generator.model
    self.max_decode_len = int(max_decode_len)
    self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
    model, length = self.model, self.max_decode_len
    self._decode_cache = jax.jit(lambda params, inputs: model.decoder_state(params, inputs,
                                                                            length)[0])
    # The parameters travel as a traced argument of the jitted step (a jax Partial), not as
    # constants compiled into it.
    self._tokens_to_logits = jax.tree_util.Partial(functools.partial(_decode_step, model.module),
                                                   generator.params)

  @property
  def max_batch_size(self) -> int:
    return self.batch_sizes[-1]

  def padded_size(self, n: int) -> int:
    if not 1 <= n <= self.max_batch_size:
      raise ValueError(f"a decode takes 1 to {self.max_batch_size} prompts; got {n}")
    return self.batch_sizes[bisect.bisect_left(self.batch_sizes, n)]

  def encode(self, request: CompletionRequest) -> dict:
    """Model inputs (batch of 1) of a request; the Generator's errors (prompt too long for
    ``max_input_len``, ...) are ValueErrors."""
    examples = [(e.image, e.prompt, e.answer) for e in request.examples]
    batch = self.generator.encode_prompt(list(request.images), request.prompt, examples)
    return {k: batch[k] for k in base.INPUT_KEYS}

  def stream(self, inputs: Sequence[dict], options: Sequence[DecodingOptions],
             rng=None) -> Iterator[np.ndarray]:
    """Yields each step's tokens ``[len(inputs)]`` (0 for rows that ended) until every row has
    emitted EOS or ``max_decode_len`` steps. ``options`` must share one ``batch_key``; sampling
    uses ``rng``, or the request's seed when decoding a seeded request (alone)."""
    n = len(inputs)
    size = self.padded_size(n)
    rows = list(range(n)) + [0] * (size - n)  # padding rows repeat the first prompt
    batch = {k: np.concatenate([inputs[r][k] for r in rows]) for k in base.INPUT_KEYS}
    cache = self._decode_cache(self.generator.params, batch)
    first = options[0]
    if first.greedy:
      sampling = {"greedy": True}
    else:
      if first.seed is not None:
        rng = jax.random.PRNGKey(first.seed)
      temperature = np.array([options[r].temperature for r in rows], np.float32)
      sampling = {"rng": rng, "temperature": temperature, "top_k": first.top_k,
                  "top_p": first.top_p}
    steps = decoding.stream_sample(self._tokens_to_logits, cache, batch_size=size,
                                   max_decode_len=self.max_decode_len, eos_id=self.model.eos_id,
                                   **sampling)
    for tokens in steps:
      yield np.atleast_1d(np.asarray(tokens))[:n]

  def warm_up(self, options: DecodingOptions):
    """Compiles every batch size for ``options``'s kind of decode (one step each)."""
    dtypes = base.batch_dtypes(base.INPUT_KEYS)
    inputs = {k: np.zeros(shape, dtypes[k]) for k, shape in self.model.input_shapes(1).items()
              if k in dtypes}
    inputs["image_mask"][:, 0] = 1
    inputs["encoder_input_tokens"][:, 0] = self.model.eos_id
    for size in self.batch_sizes:
      next(iter(self.stream([inputs] * size, [options] * size, jax.random.PRNGKey(0))))



def _decode_step(module, params, cache, tokens, step):
  """One decoder step of a ``PaliX`` module: ``(logits [B, V], new cache)`` (what the model's
  ``decoder_state`` closure computes, with the parameters as an argument)."""
  return module.apply({"params": params}, cache, tokens, step, method=type(module).decode_step)
