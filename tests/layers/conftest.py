"""Random parameters for layer tests (shapes from ``jax.eval_shape``; nothing is compiled)."""

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util


@pytest.fixture(scope="session")
def random_params():
  """``random_params(module, *inputs, seed=0)``: scales near 1, everything else N(0, 0.3).

  Biases start at zero and scales at one in ``init``; random values make a parameter that is
  unused, or used in the wrong place, change the result.
  """

  def make(module, *inputs, seed=0):
    # Inputs are closed over, so static ones (a grid shape tuple) stay Python values.
    shapes = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(seed), *inputs)))
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
      noise = rng.standard_normal(leaf.shape).astype(leaf.dtype)
      return 1 + 0.1 * noise if path[-1] == "scale" else 0.3 * noise

    return traverse_util.unflatten_dict(
        {k: fill(k, v) for k, v in traverse_util.flatten_dict(shapes.get("params", {})).items()})

  return make
