"""Time position embeddings: the ``t`` of a factorized ``(t, y, x)`` embedding for video frames.

PaLI-X (``palix.models.palix_model``) adds ``phi_t(t)`` to the patch tokens of frame ``t`` next to
the ViT's own ``phi_y(y) + phi_x(x)``, so that the frames of a clip, encoded as one ViT sequence,
know their order. ``t`` is the index of the image in its example (0 for a single image).
"""

from typing import Any

import flax.linen as nn
import gin
import jax.numpy as jnp

from palix.layers.position import sincos_1d


class LearnedTimePosEmb(nn.Module):
  """A learned table of ``max_frames`` rows; a ``t`` beyond it gives NaN (stops training)."""
  width: int
  max_frames: int = 16
  stddev: float = 0.02
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ts):
    table = self.param("time_embedding",
                       nn.with_logical_partitioning(nn.initializers.normal(self.stddev),
                                                    ("images", "vit_embed")),
                       (self.max_frames, self.width), self.param_dtype)
    return jnp.take(table, ts, axis=0, mode="fill", fill_value=jnp.nan)


class SinCosTimePosEmb(nn.Module):
  """Fixed sine-cosine ``phi_t`` over the whole width (no parameters), at the scale of the
  ViT's sine-cosine spatial embeddings."""
  width: int
  temperature: float = 10_000.0

  def __call__(self, ts):
    return sincos_1d(ts, self.width, self.temperature)


for _cls in (LearnedTimePosEmb, SinCosTimePosEmb):
  gin.constant(f"palix.{_cls.__name__}", _cls)
