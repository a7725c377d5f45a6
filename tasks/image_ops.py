"""Per-image TensorFlow ops: random crop, resize (stretch or keep aspect with padding), random flip
and value range. Random ops are stateless: the same seed gives the same result in every run.
"""

import tensorflow as tf

RESIZE_MODES = ("stretch", "pad")


def random_crop(image: tf.Tensor, seed: tf.Tensor, min_scale: float) -> tf.Tensor:
  """A crop keeping the aspect ratio, with side ``s * side`` for ``s ~ U[min_scale, 1]``.

  ``seed`` is an int ``[2]`` stateless seed; all images of one example share it, so the frames of
  a clip are cropped identically.
  """
  if not 0 < min_scale <= 1:
    raise ValueError(f"min_scale must be in (0, 1]; got {min_scale}")
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  scale_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  scale = tf.random.stateless_uniform([], scale_seed, min_scale, 1.0)
  crop_h = tf.maximum(1, tf.cast(tf.round(scale * tf.cast(height, tf.float32)), tf.int32))
  crop_w = tf.maximum(1, tf.cast(tf.round(scale * tf.cast(width, tf.float32)), tf.int32))
  return tf.image.stateless_random_crop(image, tf.stack([crop_h, crop_w, shape[2]]), offset_seed)


def resize(image: tf.Tensor, size: int, mode: str = "stretch") -> tf.Tensor:
  """Resize to ``[size, size, 3]`` float32 (values keep their range).

  ``stretch`` scales each axis independently; ``pad`` keeps the aspect ratio and pads the short
  side symmetrically with zeros. Resizing runs before :func:`to_unit_range`, so the padding is
  black (-1 in the model's range).
  """
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}; got {mode!r}")
  image = tf.cast(image, tf.float32)
  if mode == "stretch":
    resized = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
  else:
    resized = tf.image.resize_with_pad(image, size, size, method="bilinear", antialias=True)
  return tf.ensure_shape(resized, [size, size, 3])


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Left-right flip with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
  """[0, 255] -> [-1, 1] float32."""
  return tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0) / 127.5 - 1.0
