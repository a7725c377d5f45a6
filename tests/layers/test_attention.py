"""``palix.layers.attention.dot_product_attention`` (the one attention every palix layer calls)
against a numpy re-derivation, for each implementation this machine runs (``None``: JAX chooses;
``"xla"``; ``"cudnn"`` needs a GPU), in float32 and in bfloat16, with T5's bias and scale and
with padding, causal and segment masks."""

import numpy as np
import pytest
import jax.numpy as jnp

from palix.layers.attention import dot_product_attention
from palix.layers.masks import causal_mask, segment_mask

B, Q, K, H, D = 2, 5, 7, 3, 8


def reference(q, k, v, mask, bias, scale):
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if bias is not None:
    logits = logits + bias
  logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
  top = logits.max(-1, keepdims=True)
  weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))  # a query with no key: zeros
  weights /= np.maximum(weights.sum(-1, keepdims=True), 1e-30)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(B, n, H, D)).astype(np.float32) for n in (Q, K, K))
  bias = rng.normal(size=(1, H, Q, K)).astype(np.float32)  # T5's relative position bias shape
  valid = np.ones((B, K), bool)
  valid[1, 5:] = False  # the second example has two padded keys
  return q, k, v, bias, valid


@pytest.mark.parametrize("implementation", [None, "xla"])
@pytest.mark.parametrize("case", ["padding+bias, scale 1 (T5)", "causal, default scale",
                                  "segments"])
def test_matches_numpy_in_float32(inputs, implementation, case):
  q, k, v, bias, valid = inputs
  if case.startswith("padding"):
    mask, use_bias, scale = valid[:, None, None, :], bias, 1.0
  elif case.startswith("causal"):
    k, v = k[:, :Q], v[:, :Q]
    mask, use_bias, scale = np.asarray(causal_mask(Q)), None, None
  else:
    k, v = k[:, :Q], v[:, :Q]
    ids = np.array([[1, 1, 2, 2, 2], [1, 2, 2, 3, 0]])
    mask, use_bias, scale = np.asarray(segment_mask(ids)), None, 0.5
    keep = ids > 0  # a padding query attends to nothing; compare real queries only
  out = np.asarray(dot_product_attention(q, k, v, mask=mask, bias=use_bias, scale=scale,
                                         implementation=implementation))
  expected = reference(q, k, v, mask, use_bias, D ** -0.5 if scale is None else scale)
  if case == "segments":
    out, expected = out[keep], expected[keep]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", [None, "xla"])
def test_bfloat16_stays_within_bf16_rounding_of_float32(inputs, implementation):
  q, k, v, bias, valid = inputs
  mask = valid[:, None, None, :]
  out = dot_product_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), mask=mask,
                              bias=bias, scale=1.0, implementation=implementation)
  assert out.dtype == jnp.bfloat16
  expected = reference(q, k, v, mask, bias, 1.0)
  # inputs rounded to 8 bits of mantissa (2^-8 relative) through two matmuls and a softmax
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=4e-2, rtol=4e-2)
  assert np.abs(np.asarray(out, np.float32) - expected).max() > 0  # really computed in bf16


def test_padded_keys_get_no_weight(inputs):
  q, k, v, bias, valid = inputs
  changed = v.copy()
  changed[1, 5:] += 100.0  # values under padded keys must not leak into the output
  args = dict(mask=valid[:, None, None, :], bias=bias, scale=1.0)
  np.testing.assert_allclose(np.asarray(dot_product_attention(q, k, changed, **args)),
                             np.asarray(dot_product_attention(q, k, v, **args)), atol=1e-6)
