"""The decoders jitted at the call site, as their callers do (``palix.decoding`` has no jit inside).

``decode(decoding.greedy, step, cache, **kwargs)`` compiles once per decoder and set of Python
keyword values (sizes, ids, options) and traces the rest: the step's parameters (``step`` is a
``jax.tree_util.Partial``), the cache and array arguments (``rng``, a per-row ``temperature``).
Argument errors are raised while tracing, with the decoders' own messages.
"""

import functools

import jax
import numpy as np


@functools.lru_cache(maxsize=None)
def _compiled(fn, static_items):
  return jax.jit(functools.partial(fn, **dict(static_items)))


def decode(fn, step, cache, **kwargs):
  traced = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
  static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in traced))
  return _compiled(fn, static)(step, cache, **traced)
