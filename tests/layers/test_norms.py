"""LayerNorm and RMSNorm against their formulas in float64 numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from palix.layers.norms import LayerNorm, RMSNorm


def np_layernorm(x, scale, bias, eps):
  x = x.astype(np.float64)
  y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale
  return y if bias is None else y + bias


@pytest.mark.parametrize("use_bias", [True, False])
def test_layernorm_matches_formula(random_params, use_bias):
  x = np.random.RandomState(0).standard_normal((2, 5, 16)).astype(np.float32) * 3 + 1
  norm = LayerNorm(use_bias=use_bias, epsilon=1e-3)
  params = random_params(norm, x)
  assert set(params) == ({"scale", "bias"} if use_bias else {"scale"})
  want = np_layernorm(x, params["scale"], params.get("bias"), 1e-3)
  np.testing.assert_allclose(norm.apply({"params": params}, x), want, atol=1e-5)


def test_layernorm_bfloat16_keeps_float32_statistics(random_params):
  """Inputs with a large common offset: bf16 statistics would lose the small variations
  (bf16 spacing at 1000 is 4), float32 statistics keep them; only the output is rounded."""
  rng = np.random.RandomState(1)
  x = (1000 + rng.standard_normal((4, 64)) * 8).astype(jnp.bfloat16)
  norm = LayerNorm(dtype=jnp.bfloat16)
  params = random_params(norm, x)
  got = norm.apply({"params": params}, x)
  assert got.dtype == jnp.bfloat16
  want = np_layernorm(np.asarray(x, np.float64), params["scale"], params["bias"], 1e-6)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.03, rtol=0.01)


def test_rmsnorm_matches_formula(random_params):
  x = np.random.RandomState(2).standard_normal((3, 8)).astype(np.float32) + 2
  norm = RMSNorm(epsilon=1e-6)
  params = random_params(norm, x)
  assert set(params) == {"scale"}
  x64 = x.astype(np.float64)
  want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * params["scale"]
  np.testing.assert_allclose(norm.apply({"params": params}, x), want, atol=1e-5)
