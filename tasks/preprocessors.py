"""seqio preprocessors of palix tasks, and the output features they produce.

Every palix task runs ``DecodeMedia`` (raw media -> ``images`` float32 ``[n, S, S, 3]`` in
[-1, 1]), then seqio's ``tokenize`` and ``append_eos``. ``S`` is read from the ``image_size``
entry of the ``sequence_length`` mapping seqio passes to preprocessors
(``get_batches`` puts it there); plain seqio callers that leave it out get
``DEFAULT_IMAGE_SIZE``.
"""

import dataclasses
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from palix.tasks import image_ops
from palix.tasks import media_io
from palix.tasks import vocabulary as vocab_lib

DEFAULT_IMAGE_SIZE = 224
IMAGE_SIZE_KEY = "image_size"
MEDIA_KEYS = ("image/paths", "image/pixels", "video/path")


def output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> Mapping[str, seqio.Feature]:
  """``inputs`` and ``targets`` (tokens, EOS appended) and ``images`` (float32, rank 4)."""
  vocabulary = vocabulary or vocab_lib.get_vocabulary()
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary, add_eos=True),
      "images": seqio.ContinuousFeature(dtype=tf.float32, rank=4),
  }


def image_size_from(sequence_length: Optional[Mapping[str, int]]) -> int:
  if sequence_length and sequence_length.get(IMAGE_SIZE_KEY):
    return int(sequence_length[IMAGE_SIZE_KEY])
  return DEFAULT_IMAGE_SIZE


def _read_image(path):
  return media_io.read_image(path.decode("utf-8"))


@dataclasses.dataclass(frozen=True)
class DecodeMedia:
  """Raw media of an example -> ``images`` float32 ``[n, S, S, 3]`` in [-1, 1], and
  ``image/sizes`` int32 ``[n, 2]``: each image's (frame's) original height and width, for metrics
  that need them (detection areas); the feature converter passes it on only for evaluation.

  Per image: (random crop, on augmentation splits) -> resize (``stretch`` or ``pad``) ->
  (random left-right flip, on augmentation splits) -> value range. Crop and flip use the
  example's ``example_seed``; all images (frames) of an example share it.
  Attributes:
    resize_mode: ``stretch`` or ``pad`` (keep aspect ratio, pad to square).
    crop_min_scale: random crop side fraction lower bound, or None for no crop.
    flip: random left-right flips. Keep False when text mentions left/right or boxes.
    num_frames: frames sampled uniformly from ``video/path`` clips.
    sequence_length: injected by seqio; its ``image_size`` entry sets S.
  """
  resize_mode: str = "stretch"
  crop_min_scale: Optional[float] = None
  flip: bool = False
  num_frames: int = 8
  sequence_length: Optional[Mapping[str, int]] = None

  def __post_init__(self):
    if self.resize_mode not in image_ops.RESIZE_MODES:
      raise ValueError(f"resize_mode must be one of {image_ops.RESIZE_MODES}; "
                       f"got {self.resize_mode!r}")

  def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(tf.autograph.experimental.do_not_convert(self.decode_example),
                       num_parallel_calls=tf.data.AUTOTUNE)

  def _process(self, image, seed, augment, size):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if self.crop_min_scale is not None:
      image = tf.cond(augment,
                      lambda: image_ops.random_crop(image, crop_seed, self.crop_min_scale),
                      lambda: image)
    image = image_ops.resize(image, size, self.resize_mode)
    if self.flip:
      image = tf.cond(augment, lambda: image_ops.random_flip(image, flip_seed), lambda: image)
    return image_ops.to_unit_range(image)

  def decode_example(self, features):
    features = dict(features)
    size = image_size_from(self.sequence_length)
    seed, augment = features["example_seed"], features["augment"]
    spec = (tf.TensorSpec([size, size, 3], tf.float32), tf.TensorSpec([2], tf.int32))
    process = lambda image: (self._process(image, seed, augment, size), tf.shape(image)[:2])
    present = [k for k in MEDIA_KEYS if k in features]
    if len(present) != 1:
      raise ValueError(f"a raw example needs exactly one of {MEDIA_KEYS}; got {present}")
    if "video/path" in features:
      frames = tf.numpy_function(
          lambda path: media_io.read_video(path.decode("utf-8"), self.num_frames),
          [features.pop("video/path")], tf.uint8, stateful=False)
      frames = tf.ensure_shape(frames, [self.num_frames, None, None, 3])
      images = tf.map_fn(process, frames, fn_output_signature=spec)
    elif "image/pixels" in features:
      images = tf.map_fn(process, features.pop("image/pixels"), fn_output_signature=spec)
    else:
      def decode_and_process(path):
        image = tf.numpy_function(_read_image, [path], tf.uint8, stateful=False)
        return process(tf.ensure_shape(image, [None, None, 3]))
      images = tf.map_fn(decode_and_process, features.pop("image/paths"), fn_output_signature=spec)
    features["images"], features["image/sizes"] = images
    return features


def default_preprocessors(media: Optional[DecodeMedia] = None):
  """The preprocessor list of a palix task: decode media, tokenize, append EOS."""
  return [media or DecodeMedia(), seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
