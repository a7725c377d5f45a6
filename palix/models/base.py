"""The model contract (t5x's shape) shared by every palix model, and the batch it consumes.

The batch is a dict of numpy or JAX arrays; the data layer (``palix.tasks``) produces it and the
model never sees a ``tf.data`` object. Keys of the encoder-decoder batch:

===========================  =========  ===============  =========================================
key                          dtype      shape            meaning
===========================  =========  ===============  =========================================
``images``                   float32    [B, N, H, W, 3]  pixel values in [-1, 1]; N images/example
``image_mask``               int32      [B, N]           1 for a real image, 0 for a padded slot
``encoder_input_tokens``     int32      [B, Le]          prompt tokens, 0 = padding
``decoder_input_tokens``     int32      [B, Ld]          targets shifted right (BOS = 0)
``decoder_target_tokens``    int32      [B, Ld]          targets, 0 = padding, EOS = 1
``decoder_loss_weights``     float32    [B, Ld]          per-token loss weights
===========================  =========  ===============  =========================================

Packing adds ``*_segment_ids`` and ``*_positions`` (same shapes as the tokens) later.
"""

import abc
from typing import Any, Dict, Mapping, Optional, Tuple

Batch = Mapping[str, Any]
Metrics = Dict[str, Any]


class BaseModel(abc.ABC):
  """What the trainer, evaluator and CLI rely on. Every palix model implements these."""

  module: Any  # the flax module

  @abc.abstractmethod
  def get_initial_variables(self, rng, input_shapes: Mapping[str, Tuple[int, ...]],
                            input_types: Optional[Mapping[str, Any]] = None):
    """Initial variables (``{'params': ...}``, boxed with logical axis names)."""

  @abc.abstractmethod
  def loss_fn(self, params, batch: Batch, rng) -> Tuple[Any, Metrics]:
    """Scalar training loss and a dict of scalar metrics. ``rng=None`` disables dropout."""

  @abc.abstractmethod
  def predict_batch_with_aux(self, params, batch: Batch, rng=None, **decode_kwargs):
    """Decoded tokens ``[B, L]`` and an aux dict (at least per-token ``logprobs``)."""

  @abc.abstractmethod
  def score_batch(self, params, batch: Batch):
    """Per-example sum of target log-likelihoods ``[B]`` (weighted by the loss weights)."""

  @abc.abstractmethod
  def example_inputs(self, batch_size: int = 1) -> Dict[str, Any]:
    """Abstract (``jax.ShapeDtypeStruct``) inputs of ``module.__call__``, for shape-only tools."""

  def predict_batch(self, params, batch: Batch, rng=None, **decode_kwargs):
    return self.predict_batch_with_aux(params, batch, rng, **decode_kwargs)[0]

  def eval_fn(self, params, batch: Batch):
    return self.loss_fn(params, batch, None)
