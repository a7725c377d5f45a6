"""The PaLI-X feature converter: task features -> the model batch of ``palix/models/base.py``.

Task features: ``inputs`` and ``targets`` (int32 tokens ending in EOS), ``images`` (float32
``[n, S, S, 3]``). Model features: the keys, dtypes and shapes of ``base.MODEL_FEATURES``, per
example:

* ``images`` ``[N, S, S, 3]``: the n images then ``N - n`` zero slots;
* ``image_mask`` ``[N]``: 1 for the n real images (with ``video``: 1 for the first frame, 2 for
  the frames that continue its clip);
* ``encoder_input_tokens`` ``[Le]``: inputs, zero-padded;
* ``decoder_target_tokens`` ``[Ld]``: targets (EOS = 1 included), zero-padded;
* ``decoder_input_tokens`` ``[Ld]``: ``base.shift_right`` of the targets (BOS = 0 first);
* ``decoder_loss_weights`` ``[Ld]``: 1 where ``decoder_target_tokens`` is not padding.

Over-long token sequences: ``overflow='error'`` (default) fails with the task, the record id and
the text; ``overflow='truncate'`` cuts to the length (the last kept token becomes EOS) and logs a
warning with the running count (:class:`TruncationCounter`). More than N images is always an
error.

Raw fields (evaluation): with ``keep_raw=True`` every ``raw/...`` feature of an example
(:func:`copy_raw_fields` copies the source's raw example there before preprocessing) and the
original image sizes (``image/sizes`` from ``DecodeMedia``, as ``raw/image/sizes``) pass through
next to the model features, with fixed shapes (image paths and sizes padded to N), so the
evaluator reads each example once, through this pipeline (big_vision's ``keep``).

It is not a ``seqio.FeatureConverter`` subclass because seqio's base requires a length entry for
every task feature (images have none) and rank-1 features for packing. Packing (several short
examples per row) would go in :meth:`PaliXFeatureConverter.__call__` between validation and
padding: pack ``inputs``/``targets`` with ``seqio.utils.trim_and_pack_dataset`` semantics, add
``*_segment_ids``/``*_positions``, and concatenate the images of the packed examples along N with
a per-image segment id (``image_mask`` would then carry the segment id instead of 1).
"""

import logging
import threading
from typing import Dict, Mapping

import tensorflow as tf

from palix.models import base

OVERFLOW_MODES = ("error", "truncate")
MODEL_DTYPES = {key: tf.as_dtype(spec.dtype) for key, spec in base.MODEL_FEATURES.items()}
_TEXT_FEATURES = {"inputs": "encoder_input_tokens", "targets": "decoder_target_tokens"}
RAW_PREFIX = "raw/"
_NOT_RAW = ("example_seed", "augment")  # pipeline bookkeeping, not the example


def copy_raw_fields(example: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """The raw example plus a ``raw/`` copy of each of its fields, which preprocessors leave alone
  (they decode, tokenize and drop the originals) and ``keep_raw`` carries to the batch."""
  raw = {RAW_PREFIX + k: v for k, v in example.items() if k not in _NOT_RAW}
  return {**example, **raw}


class TruncationCounter:
  """Counts truncated sequences per (task, feature) and logs each one with the running total."""

  def __init__(self):
    self._lock = threading.Lock()
    self.counts: Dict[str, int] = {}

  def record(self, name: bytes, length, limit, record_id: bytes):
    key = name.decode() if isinstance(name, bytes) else str(name)
    with self._lock:
      self.counts[key] = self.counts.get(key, 0) + 1
      total = self.counts[key]
    logging.warning("truncated %s of %s from %d to %d tokens (%d truncated so far)", key,
                    record_id.decode() if isinstance(record_id, bytes) else record_id,
                    int(length), int(limit), total)
    return total


class PaliXFeatureConverter:
  """Converts a task's examples into fixed-shape model features (unpacked).

  Args:
    num_images: N, image slots per example.
    image_size: S, expected image side (the preprocessors resize to it).
    overflow: ``error`` or ``truncate`` (see the module docstring).
    task_name: named in error messages.
    bos_id: the decoder's start token (0, as in T5).
    keep_raw: also output the ``raw/`` fields (see the module docstring).
    video: the images are the frames of one clip (``source.is_video``).
  """

  def __init__(self, num_images: int = 1, image_size: int = 224, overflow: str = "error",
               task_name: str = "", bos_id: int = 0, counter: TruncationCounter = None,
               keep_raw: bool = False, video: bool = False):
    if overflow not in OVERFLOW_MODES:
      raise ValueError(f"overflow must be one of {OVERFLOW_MODES}; got {overflow!r}")
    if num_images < 1 or image_size < 1:
      raise ValueError(f"num_images and image_size must be positive; got {num_images}, "
                       f"{image_size}")
    self.num_images = num_images
    self.image_size = image_size
    self.overflow = overflow
    self.task_name = task_name
    self.bos_id = bos_id
    self.counter = counter or TruncationCounter()
    self.keep_raw = keep_raw
    self.video = video

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, tuple]:
    """Shapes of one converted example (without the batch dimension)."""
    _check_lengths(task_feature_lengths)
    return base.example_shapes(num_images=self.num_images, image_size=self.image_size,
                               feature_lengths=task_feature_lengths)

  def __call__(self, dataset: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    _check_lengths(task_feature_lengths)
    spec = dataset.element_spec
    for key, dtype, rank in (("inputs", tf.int32, 1), ("targets", tf.int32, 1),
                             ("images", tf.float32, 4)):
      if key not in spec:
        raise ValueError(f"task {self.task_name!r}: feature {key!r} missing before conversion; "
                         f"got {sorted(spec)}")
      if spec[key].dtype != dtype or spec[key].shape.rank != rank:
        raise ValueError(f"task {self.task_name!r}: feature {key!r} is {spec[key]}, expected "
                         f"{dtype.name} of rank {rank}")
    convert = lambda ex: self.convert_example(ex, task_feature_lengths)
    return dataset.map(tf.autograph.experimental.do_not_convert(convert),
                       num_parallel_calls=tf.data.AUTOTUNE)

  def _fit(self, tokens, key, limit, record_id):
    length = tf.size(tokens)
    name = f"{self.task_name}/{key}"
    if self.overflow == "error":
      check = tf.debugging.Assert(length <= limit, [
          f"task {self.task_name!r}: {key} is longer than its feature length {limit} (raise "
          f"feature_lengths[{key!r}] or use overflow='truncate'); record:", record_id,
          "tokens:", length])
      with tf.control_dependencies([check]):  # the slice only informs static shape inference
        return tf.identity(tokens)[:limit]

    def truncate():
      counted = tf.numpy_function(self.counter.record, [name, length, limit, record_id], tf.int64,
                                  stateful=True)
      with tf.control_dependencies([counted]):
        return tf.concat([tokens[:limit - 1], [1]], axis=0)  # keep EOS (id 1) last

    return tf.cond(length > limit, truncate, lambda: tokens)

  def convert_example(self, ex, task_feature_lengths):
    record_id = ex.get("record_id", tf.constant(self.task_name))
    out = {}
    for key, model_key in _TEXT_FEATURES.items():
      limit = int(task_feature_lengths[key])
      tokens = self._fit(tf.cast(ex[key], tf.int32), key, limit, record_id)
      out[model_key] = tf.ensure_shape(tf.pad(tokens, [[0, limit - tf.size(tokens)]]), [limit])
    targets = out["decoder_target_tokens"]
    out["decoder_input_tokens"] = base.shift_right(targets, self.bos_id, xp=tf.experimental.numpy)
    out["decoder_loss_weights"] = tf.cast(targets != 0, tf.float32)

    images = ex["images"]
    count = tf.shape(images)[0]
    check = tf.debugging.Assert(count <= self.num_images, [
        f"task {self.task_name!r}: more images per example than num_images={self.num_images} "
        "(raise num_images); record:", record_id, "images:", count])
    with tf.control_dependencies([check]):  # the slice only informs static shape inference
      images = tf.ensure_shape(images, [None, self.image_size, self.image_size, 3])
      images = tf.identity(images)[:self.num_images]
      padded = tf.pad(images, [[0, self.num_images - tf.shape(images)[0]], [0, 0], [0, 0], [0, 0]])
    out["images"] = tf.ensure_shape(padded, [self.num_images, self.image_size, self.image_size, 3])
    real = tf.cast(tf.range(self.num_images) < count, tf.int32)
    if self.video:  # frames after the first continue its clip (palix_model.image_groups)
      real = real * tf.where(tf.range(self.num_images) > 0, 2, 1)
    out["image_mask"] = real
    if self.keep_raw:
      out.update(self._raw_fields(ex))
    return out

  def _raw_fields(self, ex) -> Dict[str, tf.Tensor]:
    """The ``raw/`` fields, fixed-shape: image paths and sizes padded to ``num_images``."""
    out = {k: v for k, v in ex.items() if k.startswith(RAW_PREFIX)}
    if "image/sizes" in ex:
      out[RAW_PREFIX + "image/sizes"] = ex["image/sizes"]
    padded = {RAW_PREFIX + "image/paths": ("", []), RAW_PREFIX + "image/sizes": (0, [2])}
    for key, (fill, tail) in padded.items():
      if key in out:
        values = out[key][:self.num_images]
        padding = [[0, self.num_images - tf.shape(values)[0]]] + [[0, 0]] * len(tail)
        out[key] = tf.ensure_shape(tf.pad(values, padding, constant_values=fill),
                                   [self.num_images] + tail)
    return out


def zero_example(element_spec: Mapping[str, tf.TensorSpec]) -> Dict[str, tf.Tensor]:
  """An all-zero (empty-string) example of a converted dataset's ``element_spec``: no images, zero
  loss weight. It fills the last batch of a finite pass."""
  unknown = [k for k, spec in element_spec.items() if not spec.shape.is_fully_defined()]
  if unknown:
    raise ValueError(f"converted features {unknown} have no fixed shape: {element_spec}")
  return {key: tf.zeros(spec.shape, spec.dtype) for key, spec in element_spec.items()}


def _check_lengths(task_feature_lengths: Mapping[str, int]) -> None:
  if set(task_feature_lengths) != set(_TEXT_FEATURES):
    raise ValueError(f"feature_lengths must have exactly the keys {sorted(_TEXT_FEATURES)}; got "
                     f"{sorted(task_feature_lengths)}")
  for key, value in task_feature_lengths.items():
    if int(value) < 2:
      raise ValueError(f"feature_lengths[{key!r}] must be at least 2 (one token plus EOS); "
                       f"got {value}")
