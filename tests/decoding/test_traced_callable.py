"""Parameters reached through a partial or a closure are traced by jit, not baked in."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from palix import decoding
from palix.decoding.traced_callable import TracedCallable, as_traced_callable

TRACES = []


def step(params, cache, tokens, step_index, *, scale):
  TRACES.append(1)  # runs once per trace, not per call
  logits = params["table"][tokens[:, 0]] * scale + cache["bias"]
  return logits, cache


def make_params(seed):
  return {"table": jax.random.normal(jax.random.PRNGKey(seed), (5, 5))}


def reference_greedy(params, bias, length):
  token, out = 0, []
  for _ in range(length):
    token = int(np.argmax(np.asarray(params["table"])[token] * 2.0 + bias))
    out.append(token)
    if token == 1:
      break
  return out + [0] * (length - len(out))


def decode(fn):
  cache = {"bias": jnp.zeros((1, 5))}
  return decoding.greedy(fn, cache, batch_size=1, max_decode_len=4).tokens[0].tolist()


def test_partial_params_are_traced_not_constants():
  TRACES.clear()
  for seed in range(3):
    params = make_params(seed)
    got = decode(functools.partial(step, params, scale=2.0))
    assert got == reference_greedy(params, np.zeros(5), 4)
  assert len(TRACES) == 1  # one compile for three parameter sets


def test_closures_are_traced_not_constants():
  def make_fn(params):
    def fn(cache, tokens, i):
      return step(params, cache, tokens, i, scale=2.0)
    return fn

  TRACES.clear()
  for seed in range(3):
    params = make_params(seed)
    assert decode(make_fn(params)) == reference_greedy(params, np.zeros(5), 4)
  assert len(TRACES) == 1


def test_static_python_values_stay_static_and_key_the_cache():
  params = make_params(0)
  fn = as_traced_callable(functools.partial(step, params, scale=2.0))
  leaves, treedef = jax.tree_util.tree_flatten(fn)
  assert len(leaves) == 1 and leaves[0] is params["table"]
  other = as_traced_callable(functools.partial(step, params, scale=3.0))
  assert jax.tree_util.tree_structure(other) != treedef
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert isinstance(rebuilt, TracedCallable)
  tokens, cache = jnp.array([[2]]), {"bias": jnp.zeros((1, 5))}
  np.testing.assert_array_equal(rebuilt(cache, tokens, 0)[0], step(params, cache, tokens, 0,
                                                                    scale=2.0)[0])


def test_opaque_callables_still_work():
  params = make_params(1)

  class Model:
    def __call__(self, cache, tokens, i):
      return step(params, cache, tokens, i, scale=2.0)

  assert decode(Model()) == reference_greedy(params, np.zeros(5), 4)
