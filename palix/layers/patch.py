"""Patch embeddings: turn images ``[B, H, W, C]`` into tokens ``[B, gh*gw, width]``.

Both kinds return ``(tokens, (gh, gw))``; the grid shape feeds the position embedding. Both also
have ``embed_patches``: the same map, with the same parameters, on already-patchified pixels
``[B, L, p*p*C]`` (NaViT's packed sequences hold patches of several images per row).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from palix.layers import initializers as inits
from palix.layers.norms import LayerNorm


def patchify(images, patch_size):
  """``[B, H, W, C] -> [B, gh*gw, p*p*C]`` in row-major patch order, pixels ordered (py, px, c)."""
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
  gh, gw = h // p, w // p
  x = images.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, p * p * c), (gh, gw)


class ConvPatchEmbed(nn.Module):
  """The classic ViT stem: a stride-p convolution (equivalently, a Dense on each patch).

  ``embed_patches`` applies the same convolution to already-patchified pixels
  ``[B, L, p*p*C]`` (NaViT's packed sequences), so one set of parameters serves both inputs.
  """
  width: int
  patch_size: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    p = self.patch_size
    self.conv = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                        use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                        # The two spatial axes are never sharded; they have no logical name.
                        kernel_init=nn.with_logical_partitioning(
                            inits.lecun_normal, (None, None, "channels", "embed")),
                        bias_init=nn.with_logical_partitioning(inits.zeros, ("embed",)))

  def __call__(self, images):
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not divisible by the "
                       f"patch size {p}")
    x = self.conv(images)
    b, gh, gw, d = x.shape
    return x.reshape(b, gh * gw, d), (gh, gw)

  def embed_patches(self, patches):
    """``[B, L, p*p*C]`` patches (``patchify``'s pixel order) -> tokens ``[B, L, width]``."""
    b, length, size = patches.shape
    p = self.patch_size
    if size % (p * p):
      raise ValueError(f"patches have {size} values; expected patch_size^2 * channels = "
                       f"{p}*{p}*C")
    # Each patch is a p x p image: the stride-p convolution sees exactly one window of it.
    x = self.conv(patches.reshape(b * length, p, p, size // (p * p)))
    return x.reshape(b, length, self.width)


class DualPatchNormEmbed(nn.Module):
  """Dual PatchNorm (Kumar et al. 2023): patchify, LN over the patch vector, Dense, LN over width.

  ``embedding.kernel`` is ``[p*p*C, width]`` with rows in ``patchify``'s (py, px, c) order, so a
  conv stem's ``[p, p, C, width]`` kernel reshapes into it directly. ``embed_patches`` takes
  already-patchified pixels ``[B, L, p*p*C]`` (NaViT's packed sequences).
  """
  width: int
  patch_size: int
  use_bias: bool = True
  norm_bias: bool = True
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.patchln_pre = LayerNorm(use_bias=self.norm_bias, epsilon=self.epsilon, axis_name="patch",
                                 dtype=self.dtype, param_dtype=self.param_dtype)
    self.embedding = nn.Dense(
        self.width, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(inits.lecun_normal, ("patch", "embed")),
        bias_init=nn.with_logical_partitioning(inits.zeros, ("embed",)))
    self.patchln_post = LayerNorm(use_bias=self.norm_bias, epsilon=self.epsilon,
                                  dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, images):
    patches, grid = patchify(images, self.patch_size)
    return self.embed_patches(patches), grid

  def embed_patches(self, patches):
    """``[B, L, p*p*C]`` patches -> tokens ``[B, L, width]``."""
    return self.patchln_post(self.embedding(self.patchln_pre(patches)))
