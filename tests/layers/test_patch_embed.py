"""Patch embeddings: patch order, conv/patch-Dense equivalence, Dual PatchNorm against an explicit
patchify -> LN -> Dense -> LN reference, and clear errors."""

import jax
import numpy as np
import pytest

from palix.layers.patch import ConvPatchEmbed, DualPatchNormEmbed, patchify


def images(b=2, h=16, w=24, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (b, h, w, 3)).astype(np.float32)


def np_patchify(x, p):
  """Row-major patches, pixels in (py, px, c) order, written as explicit loops."""
  b, h, w, c = x.shape
  rows = []
  for gy in range(h // p):
    for gx in range(w // p):
      rows.append(x[:, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p, :].reshape(b, -1))
  return np.stack(rows, 1)


def np_layernorm(x, scale, bias, eps=1e-6):
  x = x.astype(np.float64)
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


def test_patchify_order():
  x = images()
  patches, grid = patchify(x, 8)
  assert grid == (2, 3)
  np.testing.assert_array_equal(patches, np_patchify(x, 8))


def test_conv_stem_equals_dense_on_patches(random_params):
  """The conv kernel [p, p, 3, D] reshaped to [p*p*3, D] is the same map on patchified pixels,
  which is what lets conv checkpoints load into Dual PatchNorm's Dense."""
  x = images()
  stem = ConvPatchEmbed(width=12, patch_size=8)
  params = random_params(stem, x)
  tokens, grid = stem.apply({"params": params}, x)
  assert tokens.shape == (2, 6, 12) and grid == (2, 3)
  kernel = params["conv"]["kernel"].reshape(8 * 8 * 3, 12)
  want = np_patchify(x, 8).astype(np.float64) @ kernel + params["conv"]["bias"]
  np.testing.assert_allclose(tokens, want, atol=1e-4)


def test_dual_patchnorm_matches_reference(random_params):
  x = images()
  dpn = DualPatchNormEmbed(width=12, patch_size=8)
  params = random_params(dpn, x)
  tokens, grid = jax.jit(dpn.apply)({"params": params}, x)
  assert grid == (2, 3)
  pre, post, dense = params["patchln_pre"], params["patchln_post"], params["embedding"]
  y = np_layernorm(np_patchify(x, 8), pre["scale"], pre["bias"])  # LN over p*p*3 = 192 values
  y = y @ dense["kernel"] + dense["bias"]
  want = np_layernorm(y, post["scale"], post["bias"])  # LN over width
  np.testing.assert_allclose(tokens, want, atol=1e-4)
  assert pre["scale"].shape == (192,) and post["scale"].shape == (12,)


@pytest.mark.parametrize("embed", [ConvPatchEmbed, DualPatchNormEmbed])
def test_size_not_divisible_by_patch(embed):
  with pytest.raises(ValueError, match="16x20 is not divisible by the patch size 8"):
    jax.eval_shape(embed(width=4, patch_size=8).init, jax.random.PRNGKey(0), images(h=16, w=20))
