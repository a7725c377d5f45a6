"""The model contract (t5x's shape) shared by every palix model, and the batch it consumes.

The batch is a dict of numpy or JAX arrays; the data layer (``palix.tasks``) produces it and the
model never sees a ``tf.data`` object. Its keys, dtypes and per-example shapes are declared once,
in :data:`MODEL_FEATURES` (seqio declares its converters' ``MODEL_FEATURES`` the same way); the
feature converter, the batch checks, the models' input shapes and the evaluator read them from
here. Packing adds ``*_segment_ids`` and ``*_positions`` (same shapes as the tokens) later.
"""

import abc
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

Batch = Mapping[str, Any]
Metrics = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One batch key: its dtype and its per-example shape.

  ``shape`` names each dimension by the geometry setting it comes from (:func:`example_shapes`):
  ``num_images``, ``height`` and ``width`` (both the image size), ``input_length`` and
  ``target_length`` (the ``inputs`` and ``targets`` feature lengths); integers are fixed.
  """
  dtype: type
  shape: Tuple[Union[str, int], ...]
  meaning: str

  def describe(self) -> str:
    """The batch shape as errors name it, e.g. ``[batch, num_images, height, width, 3]``."""
    return "[" + ", ".join(["batch"] + [str(d) for d in self.shape]) + "]"


MODEL_FEATURES: Dict[str, FeatureSpec] = {
    "images": FeatureSpec(np.float32, ("num_images", "height", "width", 3),
                          "pixel values in [-1, 1]; N images per example"),
    "image_mask": FeatureSpec(np.int32, ("num_images",),
                              "1 for a real image (2: a video frame continuing the clip of "
                              "the image before), 0 for a padded slot"),
    "encoder_input_tokens": FeatureSpec(np.int32, ("input_length",), "prompt tokens, 0 = padding"),
    "decoder_input_tokens": FeatureSpec(np.int32, ("target_length",),
                                        "targets shifted right (BOS = 0): shift_right"),
    "decoder_target_tokens": FeatureSpec(np.int32, ("target_length",),
                                         "targets, 0 = padding, EOS = 1"),
    "decoder_loss_weights": FeatureSpec(np.float32, ("target_length",), "per-token loss weights"),
}
# What decoding needs (the prompt side); the other keys come from the targets.
INPUT_KEYS = ("images", "image_mask", "encoder_input_tokens")
TARGET_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def example_shapes(*, num_images: int, image_size: int, feature_lengths: Mapping[str, int],
                   keys: Sequence[str] = tuple(MODEL_FEATURES)) -> Dict[str, Tuple[int, ...]]:
  """Per-example shapes of ``keys`` for a geometry (``feature_lengths``: ``inputs``, ``targets``)."""
  sizes = {"num_images": int(num_images), "height": int(image_size), "width": int(image_size),
           "input_length": int(feature_lengths["inputs"]),
           "target_length": int(feature_lengths["targets"])}
  return {k: tuple(sizes.get(d, d) for d in MODEL_FEATURES[k].shape) for k in keys}


def batch_shapes(batch_size: int, *, num_images: int, image_size: int,
                 feature_lengths: Mapping[str, int],
                 keys: Sequence[str] = tuple(MODEL_FEATURES)) -> Dict[str, Tuple[int, ...]]:
  """:func:`example_shapes` with the batch dimension in front."""
  shapes = example_shapes(num_images=num_images, image_size=image_size,
                          feature_lengths=feature_lengths, keys=keys)
  return {k: (int(batch_size),) + shape for k, shape in shapes.items()}


def batch_dtypes(keys: Sequence[str] = tuple(MODEL_FEATURES)) -> Dict[str, type]:
  return {k: MODEL_FEATURES[k].dtype for k in keys}


def shift_right(targets, bos_id: int = 0, xp=np):
  """Decoder inputs from targets along the last axis: ``[t0, t1, ...] -> [bos, t0, t1, ...]``,
  same length. ``xp`` is the array namespace: ``numpy`` (default), ``jax.numpy`` or
  ``tf.experimental.numpy`` (the data layer's converter), so every layer shifts the same way."""
  first = xp.full_like(targets[..., :1], bos_id)
  return xp.concatenate([first, targets[..., :-1]], axis=-1)


def check_lengths_fit(task_feature_lengths: Mapping[str, int], model_name: str,
                      limits: Mapping[str, Tuple[str, int]]) -> None:
  """``TASK_FEATURE_LENGTHS[key] <= limit`` for ``limits = {key: (binding, limit)}``; the error
  names both gin settings. (A longer prompt would be rejected by every batch; longer targets would
  be decoded only up to the model's default length, cut without a word.)"""
  for key, (binding, limit) in limits.items():
    length = task_feature_lengths.get(key)
    if length is not None and int(length) > int(limit):
      raise ValueError(
          f"TASK_FEATURE_LENGTHS[{key!r}] = {length} is longer than {model_name}.{binding} = "
          f"{limit}: the two must agree. Set {model_name}.{binding} = {length} (or shorten "
          f"TASK_FEATURE_LENGTHS[{key!r}])")


class BaseModel(abc.ABC):
  """Everything the trainer, the evaluators, ``palix infer``, the ``Generator`` and the CLI call on a
  model. Every palix model implements the abstract methods; the others have defaults."""

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

  def input_shapes(self, batch_size: int = 1) -> Dict[str, Tuple[int, ...]]:
    """Batch shapes for ``get_initial_variables`` when no batch is at hand (loading a checkpoint
    for the ``Generator``, the evaluator or serving). Default: those of ``example_inputs``."""
    return {k: tuple(v.shape) for k, v in self.example_inputs(batch_size).items()}

  def check_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> None:
    """Raises a ``ValueError`` naming both settings when the data's token lengths
    (``TASK_FEATURE_LENGTHS``) do not fit the lengths the model was configured with. The trainer,
    the evaluators and ``palix infer`` call it at start-up. Default: the model sets no lengths."""

  def frozen_param_prefixes(self) -> Tuple[str, ...]:
    """Top-level parameter paths the optimizer leaves alone and keeps no state for (the
    trainer's ``Optimizer.with_frozen_prefixes``). Default: none."""
    return ()

  def predict_batch(self, params, batch: Batch, rng=None, **decode_kwargs):
    return self.predict_batch_with_aux(params, batch, rng, **decode_kwargs)[0]

  def eval_fn(self, params, batch: Batch):
    """Teacher-forced metrics of a batch (``palix.eval.teacher_forced``): the loss without
    dropout."""
    return self.loss_fn(params, batch, None)
