"""One image -> its patch sequence, in TensorFlow: aspect-preserving resize, patchify, token drop.

The per-image half of NaViT's Patch n' Pack (``palix.tasks.packing`` packs the sequences). Random
choices (the sampled side, the drop share, which patches stay) are stateless functions of the
example's seed, so the same example gives the same sequence in every run.
"""

from typing import Dict, Optional

import tensorflow as tf

from palix.tasks import packing


def resized_grid(height, width, side, patch_size: int):
  """The patch grid ``(gh, gw)`` of an image whose longest side becomes ``side`` pixels.

  Each side is scaled by ``side / max(height, width)`` and rounded to whole patches (at least
  one), so the aspect ratio is kept to within half a patch per side; never stretched on purpose.
  """
  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  scale = tf.cast(side, tf.float32) / tf.maximum(height, width)
  grid = lambda length: tf.maximum(
      1, tf.cast(tf.round(length * scale / patch_size), tf.int32))
  return grid(height), grid(width)


def longest_side(height, width, options: packing.Resolution, training: bool, seed):
  """The longest side (pixels) the image gets: sampled in training, fixed or native at eval."""
  native = tf.minimum(tf.maximum(height, width), options.max_side)
  if training and options.train_sides is not None:
    low, high = options.train_sides
    return tf.random.stateless_uniform([], seed, low, high + 1, dtype=tf.int32)
  if options.eval_side is not None:
    return tf.constant(options.eval_side, tf.int32)
  return native


def patchify(image, patch_size: int):
  """``[H, W, C]`` (multiples of the patch) -> ``(patches [gh*gw, p*p*C], ys, xs)``, row-major,
  pixels in (py, px, c) order as ``palix.layers.patch.patchify``."""
  shape = tf.shape(image)
  gh, gw, channels = shape[0] // patch_size, shape[1] // patch_size, shape[2]
  x = tf.reshape(image, [gh, patch_size, gw, patch_size, channels])
  x = tf.transpose(x, [0, 2, 1, 3, 4])
  patches = tf.reshape(x, [gh * gw, patch_size * patch_size * channels])
  positions = tf.range(gh * gw)
  return patches, positions // gw, positions % gw


def drop_share(num_tokens, options: packing.TokenDropping, seed):
  """The share of an image's patches to drop (see ``packing.TokenDropping``)."""
  if options.beta is not None:
    a, b = options.beta
    seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    ga = tf.random.stateless_gamma([], seed_a, alpha=a)
    gb = tf.random.stateless_gamma([], seed_b, alpha=b)
    share = ga / tf.maximum(ga + gb, 1e-12)
  else:
    share = tf.constant(options.rate, tf.float32)
  if options.reference_tokens is not None:
    share = share * tf.cast(num_tokens, tf.float32) / float(options.reference_tokens)
  return tf.clip_by_value(share, 0.0, options.max_rate)


def kept_positions(num_tokens, share, seed):
  """Sorted positions of the ``max(1, n - round(share * n))`` patches kept, chosen at random."""
  n = tf.cast(num_tokens, tf.float32)
  keep = tf.maximum(1, num_tokens - tf.cast(tf.round(share * n), tf.int32))
  order = tf.argsort(tf.random.stateless_uniform([num_tokens], seed))
  return tf.sort(order[:keep])


def patch_sequence(image, *, options: packing.PackingOptions, training: bool, seed,
                   flip: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
  """uint8 ``[h, w, 3]`` -> ``{patches (float32, [-1, 1]), ys, xs, grid, num_tokens}``.

  Steps: the longest side (``longest_side``), an antialiased bilinear resize to the whole-patch
  grid (``resized_grid``), an optional left-right flip (``flip``: a bool tensor), the value
  range, patchify, and in training the token drop (``options.token_dropping``).
  """
  p = options.patch_size
  side_seed, drop_seed, keep_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  shape = tf.shape(image)
  side = longest_side(shape[0], shape[1], options.resolution, training, side_seed)
  gh, gw = resized_grid(shape[0], shape[1], side, p)
  resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([gh * p, gw * p]),
                            method="bilinear", antialias=True)
  if flip is not None:
    resized = tf.cond(flip, lambda: tf.image.flip_left_right(resized), lambda: resized)
  pixels = tf.clip_by_value(resized, 0.0, 255.0) / 127.5 - 1.0
  patches, ys, xs = patchify(pixels, p)
  num_tokens = gh * gw
  if training and options.token_dropping.enabled:
    share = drop_share(num_tokens, options.token_dropping, drop_seed)
    keep = kept_positions(num_tokens, share, keep_seed)
    patches, ys, xs = (tf.gather(t, keep) for t in (patches, ys, xs))
  return {"patches": patches, "ys": tf.cast(ys, tf.int32), "xs": tf.cast(xs, tf.int32),
          "grid": tf.stack([gh, gw]), "num_tokens": tf.shape(patches)[0]}

