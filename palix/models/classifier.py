"""An image classifier: a ViT, its pooled output per image, and a linear head to the classes.

``ImageClassifier`` is the Flax module; ``ClassifierModel`` implements the model contract
(``palix.models.base``) so that ``palix train`` trains it and ``palix infer`` with
``runs/eval_teacher_forced.gin`` evaluates it. The ViT is any ``ViTConfig`` whose ``pool`` is
``GlobalAveragePool`` or ``MAPHead`` (one vector per image); everything else about it (blocks,
patch and position embeddings, an MoE MLP) is chosen by gin, which is how Soft MoE, sparsity and
AdaTape experiments reuse this model.

Plain batch (``palix.tasks.class_batches``):

================  =======  ================================  ===================================
key               dtype    shape                             meaning
================  =======  ================================  ===================================
``images``        float32  [B, H, W, 3] or [B, 1, H, W, 3]   pixels in [-1, 1]
``labels``        int32    [B]                               class ids
``image_mask``    int32    [B]                               optional: 0 marks a padding row
================  =======  ================================  ===================================

Packed batch (NaViT, ``palix.tasks.packing``): up to K images of any size per row of L tokens.

================  =======  ================  ===================================================
key               dtype    shape             meaning
================  =======  ================  ===================================================
``patches``       float32  [B, L, p*p*3]     patch pixels in [-1, 1]
``image_ids``     int32    [B, L]            0 = padding, k = the image in slot k-1
``ys``, ``xs``    int32    [B, L]            each token's patch coordinates in its image
``grid_sizes``    int32    [B, K, 2]         each slot's patch grid (gh, gw)
``labels``        int32    [B, K]            class id per slot
``image_mask``    int32    [B, K]            1 for a real image, 0 for an empty slot
================  =======  ================  ===================================================

Empty slots and padding rows are masked out of the loss, the metrics and the scores; their
predictions are -1. Metrics of ``loss_fn``: ``loss`` (softmax cross-entropy, mean over real
images), ``accuracy``, ``num_examples`` and ``num_tokens`` (both the number of real images: each
image is one scored target, and ``num_tokens`` is the weight ``palix infer``'s evaluation
averages batches by).
"""

import dataclasses
from typing import Any, Dict

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from palix.layers import initializers as inits
from palix.layers import soft_moe
from palix.layers.adatape import ponder_loss_and_metrics
from palix.models import base
from palix.models import losses
from palix.models.vit import GlobalAveragePool, MAPHead, ViT, ViTConfig


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The classifier's shape.

  Attributes:
    vit: the image encoder; its ``pool`` must give one vector per image (``GlobalAveragePool``
      or ``MAPHead``).
    num_classes: outputs of the linear head.
    head_zero_init: start the head at zero (big_vision's default): every class starts equally
      likely and the first updates do not push random features around.
  """
  vit: ViTConfig = gin.REQUIRED
  num_classes: int = 10
  head_zero_init: bool = True

  def resolved_vit(self) -> ViTConfig:
    vit = self.vit.resolved()
    if vit.pool not in (GlobalAveragePool, MAPHead):
      name = getattr(vit.pool, "__name__", vit.pool)
      raise ValueError(f"ClassifierConfig.vit.pool is {name}; a classifier needs one vector per "
                       "image: set ViTConfig.pool = %vit.GlobalAveragePool or %vit.MAPHead")
    if self.num_classes < 2:
      raise ValueError(f"ClassifierConfig.num_classes must be at least 2; got {self.num_classes}")
    return vit


class ImageClassifier(nn.Module):
  """Images ``[B, H, W, 3]`` -> logits ``[B, num_classes]``."""
  config: ClassifierConfig

  def setup(self):
    vit = self.config.resolved_vit()
    self.vit = ViT(vit, name="vit")
    kernel_init = inits.zeros if self.config.head_zero_init else inits.lecun_normal
    # The classes are the head's output vocabulary: the same logical axis as a text vocabulary.
    self.head = nn.Dense(
        self.config.num_classes, dtype=jnp.float32, param_dtype=vit.params_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(inits.zeros, ("vocab",)), name="head")

  def __call__(self, images, *, train: bool = False):
    return self.logits_and_out(images, train=train)[0]

  def logits_and_out(self, images, *, train: bool = False):
    """Logits and the ViT's ``out`` (an AdaTape ViT's tape tokens used and ponder cost in it)."""
    pooled, out = self.vit(images, train=train)
    return self.head(pooled.astype(jnp.float32)), out

  def packed(self, patches, image_ids, ys, xs, grid_sizes, *, train: bool = False):
    """Packed rows -> logits ``[B, K, num_classes]`` (one row of logits per image slot)."""
    pooled, _ = self.vit.encode_packed(patches, image_ids, ys, xs, grid_sizes, train=train)
    return self.head(pooled.astype(jnp.float32))


PACKED_KEYS = ("patches", "image_ids", "ys", "xs", "grid_sizes", "labels", "image_mask")


@gin.configurable
class ClassifierModel(base.BaseModel):
  """The classifier's model contract: init, cross-entropy loss, argmax prediction, scoring.

  Args:
    config: the module config.
    image_size: the square input side of ``example_inputs`` and of the initialisation images
      (the parameters do not depend on it).
    label_smoothing: of the training and evaluation loss (t5x semantics, ``palix.models.losses``).
  """

  def __init__(self, config: ClassifierConfig = gin.REQUIRED, *, image_size: int = 224,
               label_smoothing: float = 0.0):
    config.resolved_vit()  # errors at construction, not at the first step
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"ClassifierModel.label_smoothing must be in [0, 1); got {label_smoothing}")
    self.config = config
    self.module = ImageClassifier(config)
    self.image_size = image_size
    self.label_smoothing = label_smoothing

  @property
  def num_classes(self) -> int:
    return self.config.num_classes

  # --- shapes -------------------------------------------------------------------------------
  def example_inputs(self, batch_size: int = 1) -> Dict[str, Any]:
    s = self.image_size
    return {"images": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32)}

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    """Variables of the module (they do not depend on the batch geometry)."""
    del input_shapes, input_types
    s = self.image_size
    return self.module.init(rng, jnp.zeros((1, s, s, 3), jnp.float32))

  # --- batch plumbing -----------------------------------------------------------------------
  @staticmethod
  def single_images(images):
    """``images`` as ``[B, H, W, 3]``; a 5-D batch must have exactly one image slot."""
    shape = tuple(np.shape(images))
    if len(shape) == 5 and shape[1] == 1 and shape[-1] == 3:
      return images[:, 0]
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(f"batch['images'] has shape {shape}; expected [batch, height, width, 3] "
                       "or [batch, 1, height, width, 3]")
    return images

  @staticmethod
  def _require(batch, keys):
    missing = [k for k in keys if k not in batch]
    if missing:
      raise KeyError(f"batch is missing {', '.join(repr(k) for k in missing)}; it has "
                     f"{sorted(batch)}")

  @staticmethod
  def is_packed(batch) -> bool:
    """Packed (NaViT) batches carry ``patches`` instead of ``images``."""
    return "patches" in batch

  def _logits(self, params, batch, dropout_rng=None, mutable=False):
    """Logits (and, with ``mutable`` collections, ``(logits, their values)``)."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    variables, train = {"params": params}, dropout_rng is not None
    if self.is_packed(batch):
      self._check_packed(batch)
      return self.module.apply(variables, *(batch[k] for k in PACKED_KEYS[:5]), train=train,
                               rngs=rngs, mutable=mutable, method=ImageClassifier.packed)
    self._require(batch, ("images",))
    images = self.single_images(batch["images"])
    return self.module.apply(variables, images, train=train, rngs=rngs, mutable=mutable)

  def _check_packed(self, batch):
    self._require(batch, PACKED_KEYS)
    mask_shape = tuple(np.shape(batch["image_mask"]))
    if len(mask_shape) != 2:
      raise ValueError(f"packed batch['image_mask'] has shape {mask_shape}; expected "
                       "[batch, num_image_slots]")
    rows, slots = mask_shape
    for key in ("labels", "image_mask"):
      if tuple(np.shape(batch[key])) != (rows, slots):
        raise ValueError(f"packed batch[{key!r}] has shape {tuple(np.shape(batch[key]))}; "
                         f"expected [{rows}, {slots}] (one entry per image slot)")
    if tuple(np.shape(batch["grid_sizes"])) != (rows, slots, 2):
      raise ValueError(f"packed batch['grid_sizes'] has shape {tuple(np.shape(batch['grid_sizes']))}"
                       f"; expected [{rows}, {slots}, 2]")

  def _labels_and_weights(self, batch):
    """``labels`` and float weights of the same shape (``image_mask``, else ones), checked
    before any compute so that a bad batch fails fast."""
    if self.is_packed(batch):
      self._check_packed(batch)
      return batch["labels"], jnp.asarray(batch["image_mask"]).astype(jnp.float32)
    self._require(batch, ("images", "labels"))
    batch_size = np.shape(batch["images"])[0]
    labels = batch["labels"]
    if tuple(np.shape(labels)) != (batch_size,):
      raise ValueError(f"batch['labels'] has shape {tuple(np.shape(labels))}; expected "
                       f"[{batch_size}] (one class id per image)")
    weights = batch.get("image_mask")
    weights = (jnp.ones((batch_size,), jnp.float32) if weights is None
               else jnp.reshape(weights, (batch_size,)).astype(jnp.float32))
    return labels, weights

  # --- training -----------------------------------------------------------------------------
  def loss_fn(self, params, batch, rng):
    """Mean softmax cross-entropy over the real images; ``rng=None`` disables dropout. With an
    AdaTape ViT the weighted ponder cost joins the loss and the tape tokens used the metrics."""
    labels, weights = self._labels_and_weights(batch)
    if self.config.vit.adatape is not None:
      return self._tape_loss_fn(params, batch, rng, labels, weights)
    # Soft MoE layers sow their routing statistics; they join the metrics (TensorBoard).
    logits, state = self._logits(params, batch, rng, mutable=[soft_moe.MOE_METRICS])
    loss, metrics = self.loss_and_metrics(logits, labels, weights)
    return loss, {**metrics, **soft_moe.collect_metrics(state)}

  def _tape_loss_fn(self, params, batch, rng, labels, weights):
    if self.is_packed(batch):
      raise ValueError("ViTConfig.adatape does not support packed batches (one tape per row)")
    rngs = {"dropout": rng} if rng is not None else None
    logits, out = self.module.apply(
        {"params": params}, self.single_images(batch["images"]), train=rng is not None,
        rngs=rngs, method=ImageClassifier.logits_and_out)
    loss, metrics = self.loss_and_metrics(logits, labels, weights)
    ponder, tape_metrics = ponder_loss_and_metrics(out, self.config.vit.adatape, weights)
    return loss + ponder, {**metrics, **tape_metrics, "cross_entropy": loss,
                           "loss": loss + ponder}

  def loss_and_metrics(self, logits, labels, weights):
    """Loss and metrics of logits ``[..., C]`` against ``labels [...]`` weighted by ``weights``."""
    per_image, _ = losses.cross_entropy_with_z_loss(logits, labels,
                                                    label_smoothing=self.label_smoothing)
    count = weights.sum()
    denom = jnp.maximum(count, 1.0)
    loss = (per_image * weights).sum() / denom
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return loss, {"loss": loss, "accuracy": (correct * weights).sum() / denom,
                  "num_examples": count, "num_tokens": count}

  # --- inference ----------------------------------------------------------------------------
  def predict_batch_with_aux(self, params, batch, rng=None, **decode_kwargs):
    """Class ids and ``{'logits', 'logprobs' [..., C], 'scores'}`` (log p(predicted)).

    Plain batches give ``[B]`` ids, packed ones ``[B, K]`` with -1 (and score 0) for empty slots.
    """
    del rng
    if decode_kwargs:
      raise TypeError(f"ClassifierModel.predict_batch_with_aux takes no decoding options; got "
                      f"{sorted(decode_kwargs)}")
    logits = self._logits(params, batch)
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scores = jnp.take_along_axis(logprobs, predictions[..., None], axis=-1)[..., 0]
    if self.is_packed(batch):
      real = jnp.asarray(batch["image_mask"]) > 0
      predictions, scores = jnp.where(real, predictions, -1), jnp.where(real, scores, 0.0)
    return predictions, {"logits": logits, "logprobs": logprobs, "scores": scores}

  def score_batch(self, params, batch):
    """``log p(label)`` per image, ``[B]`` (``[B, K]`` packed); 0 for padding."""
    labels, weights = self._labels_and_weights(batch)
    logits = self._logits(params, batch)
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logprobs, labels[..., None], axis=-1)[..., 0] * weights

