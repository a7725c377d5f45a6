"""Shared tiny-ViT helpers: a small config, random images, random params, a jitted forward."""

import functools

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from palix.models.vit import ViT

# width 32, 2 layers, 4 heads of 8, 32px images with patch 8 -> a 4x4 grid of 16 tokens.
TINY_VIT = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, image_size=32)


@pytest.fixture(scope="session")
def tiny_vit():
  """``ViTConfig`` keyword arguments of the tiny ViT (copy before changing)."""
  return dict(TINY_VIT)


@pytest.fixture(scope="session")
def vit_images():
  """``images(size, batch=2, seed=0)``: uniform [-1, 1] float32 ``[batch, size, size, 3]``."""

  def images(size, batch=2, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)

  return images


@functools.partial(jax.jit, static_argnums=0)
def _vit_forward(config, params, images):
  return ViT(config).apply({"params": params}, images)


@pytest.fixture(scope="session")
def vit_forward():
  """``forward(config, params, images) -> (output, out)``, jitted with the config static.

  One compiled function per (config, shapes) for the whole session: tests that use the same
  config share it, which matters on a 2-core machine where each XLA compile takes ~1 s.
  """
  return _vit_forward


@pytest.fixture(scope="session")
def vit_init():
  """``init(module, *inputs, seed=0)`` -> random params with the shapes ``module.init`` gives.

  Shapes come from ``jax.eval_shape`` (nothing is compiled, which keeps the tests fast). Values
  are random everywhere: norm scales near 1, everything else (biases included) N(0, 0.3), so a
  parameter that is created but unused, or used in the wrong place, changes the result.
  """

  def init(module, *inputs, seed=0):
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(seed), *inputs)
    shapes = nn.meta.unbox(shapes.get("params", {}))
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
      noise = rng.standard_normal(leaf.shape).astype(leaf.dtype)
      if path[-1] == "scale":
        return 1 + 0.1 * noise
      return 0.3 * noise

    return traverse_util.unflatten_dict(
        {k: fill(k, v) for k, v in traverse_util.flatten_dict(shapes).items()})

  return init
