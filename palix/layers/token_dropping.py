"""Token dropping by pixel variance (OWL-ST): skip the patches that are almost flat.

OWL-ST (papers.md §2.4) drops the image patches with the lowest pixel variance before the
Transformer: flat background carries no object, and half of the tokens cost half of the encoder.
Here ``keep_high_variance`` picks, per image, the ``keep`` patches with the highest variance of
their pixels (over the patch's pixels and channels); the indices come back in raster order so
that the kept tokens keep their relative order. ``keep`` is a static count: every image of the
batch keeps as many tokens, so the shapes do not change under ``jit``.
"""

import jax
import jax.numpy as jnp


def patch_variance(images, patch_size: int):
  """``[B, P]`` variance of each ``patch_size`` patch of ``images [B, H, W, C]`` (row-major)."""
  b, h, w, c = images.shape
  gh, gw = h // patch_size, w // patch_size
  patches = images[:, :gh * patch_size, :gw * patch_size].reshape(
      b, gh, patch_size, gw, patch_size, c)
  patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)
  return jnp.var(patches.astype(jnp.float32), axis=-1)


def keep_high_variance(images, patch_size: int, keep: int):
  """``[B, keep]`` indices of the highest-variance patches, ascending (ties: lower index)."""
  variance = patch_variance(images, patch_size)
  if not 1 <= keep <= variance.shape[1]:
    raise ValueError(f"token dropping keeps {keep} of {variance.shape[1]} patches; expected "
                     f"1 <= keep <= {variance.shape[1]}")
  _, index = jax.lax.top_k(variance, keep)
  return jnp.sort(index, axis=-1)


def gather_tokens(x, index):
  """``x [B, P, ...]`` at ``index [B, K]`` -> ``[B, K, ...]``."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
