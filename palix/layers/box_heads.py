"""OWL-ViT's per-token heads: boxes with a patch-grid bias, open-vocabulary classes, objectness.

* ``box_bias``: each token's box starts at its own patch. The box head predicts cxcywh *logits*
  and adds ``logit(patch centre)`` and ``logit(1 / grid)``; its last layer is zero-initialised,
  so an untrained head puts every token's box exactly on its patch (centre and size). scenic's
  ``compute_box_bias`` uses each patch's bottom-right corner ``(i + 1) / W`` instead of its
  centre; the centre is what makes the box and the token's receptive field coincide.
* ``PredictorMLP``: GELU MLP, last layer zero-initialised (scenic's ``PredictorMLP``).
* ``ClassPredictor``: per-token class embeddings compared with text-query embeddings, both
  L2-normalised, then a learned per-token shift and scale: ``(cos + shift) * (elu(s) + 1)``.
  Padded queries get a logit of ``-1e6``, so they never score and never match.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from palix.layers import initializers as inits
from palix.layers.mlp import gelu_exact

PADDED_QUERY_LOGIT = -1e6


def _logit(x):
  """scenic's stabilised inverse sigmoid: ``log(x + 1e-4) - log1p(-x + 1e-4)``."""
  return jnp.log(x + 1e-4) - jnp.log1p(-x + 1e-4)


def patch_centres(grid_h: int, grid_w: int):
  """``[grid_h * grid_w, 2]`` normalised ``(x, y)`` centres of the patches, row-major."""
  ys, xs = jnp.meshgrid((jnp.arange(grid_h) + 0.5) / grid_h, (jnp.arange(grid_w) + 0.5) / grid_w,
                        indexing="ij")
  return jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def box_bias(grid_h: int, grid_w: int):
  """``[P, 4]`` cxcywh logits: patch centre and ``1 / grid`` size, so ``sigmoid(bias)`` is the
  patch's own box (up to the ``1e-4`` of the stabilised logit)."""
  centres = _logit(patch_centres(grid_h, grid_w))
  sizes = jnp.broadcast_to(_logit(jnp.array([1.0 / grid_w, 1.0 / grid_h])), centres.shape)
  return jnp.concatenate([centres, sizes], axis=-1)


class PredictorMLP(nn.Module):
  """``num_layers`` Dense layers, GELU between them; the last one starts at zero.

  Hidden kernels alternate their logical names (``embed -> mlp``, ``mlp -> embed``, ...): a
  kernel may not name one axis twice.
  """
  out_dim: int
  num_layers: int = 3
  hidden_dim: Optional[int] = None  # None: the input width
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = self.hidden_dim or x.shape[-1]
    names = ("embed", "mlp")
    for i in range(self.num_layers - 1):
      axes = (names[i % 2], names[(i + 1) % 2])
      x = nn.Dense(hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=nn.with_logical_partitioning(inits.lecun_normal, axes),
                   bias_init=nn.with_logical_partitioning(inits.zeros, axes[1:]),
                   name=f"hidden{i}")(x)
      x = gelu_exact(x)
    return nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.with_logical_partitioning(
                        inits.zeros, (names[(self.num_layers - 1) % 2], None)),
                    bias_init=nn.with_logical_partitioning(inits.zeros, (None,)),
                    name="out")(x)


def l2_normalize(x, eps: float = 1e-6):
  """``x / |x|`` over the last axis; finite, with a finite gradient, at ``x = 0`` (a padded
  query's embedding can be exactly zero)."""
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps * eps)


class ClassPredictor(nn.Module):
  """Token features ``[B, P, D]`` and query embeddings ``[B, Q, E]`` -> logits ``[B, P, Q]``.

  Attributes:
    embed_dim: the joint image-text width ``E`` (the token projection's output; named ``mlp``
      for partitioning, like any hidden width).
    normalize: L2-normalise both sides (OWL-ViT v2 does).
    shift_init: initial bias of the per-token shift.
    scale_init: initial per-token scale ``elu(s) + 1`` (at least 1). A cosine similarity only
      spans [-1, 1], so the scale is what lets the scores of two queries differ; starting it at
      the image-text model's temperature (SigLIP learns ``exp(t)`` of about 10) starts the class
      scores as sharp as the image-text model's.
  """
  embed_dim: int
  normalize: bool = True
  shift_init: float = 0.0
  scale_init: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embedding = nn.Dense(self.embed_dim, kernel_init=nn.with_logical_partitioning(
        inits.lecun_normal, ("embed", "mlp")), bias_init=nn.with_logical_partitioning(
            inits.zeros, ("mlp",)), name="embedding", **kw)
    self.shift = nn.Dense(1, kernel_init=nn.with_logical_partitioning(
        inits.normal(1e-6), ("embed", None)), bias_init=nn.with_logical_partitioning(
            nn.initializers.constant(self.shift_init), (None,)), name="shift", **kw)
    if self.scale_init < 1.0:
      raise ValueError(f"ClassPredictor.scale_init must be >= 1 (elu(s) + 1 > 0 starts at "
                       f"s = scale_init - 1); got {self.scale_init}")
    self.scale = nn.Dense(1, kernel_init=nn.with_logical_partitioning(
        inits.normal(1e-6), ("embed", None)), bias_init=nn.with_logical_partitioning(
            nn.initializers.constant(self.scale_init - 1.0), (None,)), name="scale", **kw)

  def class_embeddings(self, x):
    """Per-token class embeddings ``[B, P, E]`` (normalised when ``normalize``)."""
    emb = self.embedding(x)
    return l2_normalize(emb) if self.normalize else emb

  def __call__(self, x, query_embeddings, query_mask=None):
    image = self.class_embeddings(x).astype(jnp.float32)
    queries = query_embeddings.astype(jnp.float32)
    if self.normalize:
      queries = l2_normalize(queries)
    logits = jnp.einsum("bpd,bqd->bpq", image, queries)
    shift = self.shift(x).astype(jnp.float32)
    scale = nn.elu(self.scale(x).astype(jnp.float32)) + 1.0
    logits = (logits + shift) * scale
    if query_mask is not None:
      logits = jnp.where(query_mask[:, None, :] > 0, logits, PADDED_QUERY_LOGIT)
    return logits
