"""Packed PaLI-X training batches of a task or mixture: native resolution, several examples a row.

``get_packed_batches(name, split=..., batch_size=..., stream=PackedStream(...))`` yields, per
step, the packed batch of ``palix.models.packed_batch``: ``batch_size`` rows, each holding
several examples (segments) whose images keep their aspect ratio at their task's own resolution
(``PackedStream.sides``: the longest side in pixels) and go through the ViT as patch sequences,
video clips as one sequence of all their frames.

Per example (TensorFlow, one ``tf.data`` branch per task as in ``palix.tasks.dataset``): the
source's raw example -> the task's media settings (its ``DecodeMedia``: random crop and flip on
augmentation splits; video frames) applied to each image, resized keeping its aspect ratio and
patchified (``palix.tasks.image_patches``) -> the task's tokenizing preprocessors. Then, on the
host, ``palix.tasks.packed_examples``: which examples belong to step ``j`` is fixed by the
schedule before anything is packed (a window of ``examples_per_step`` positions of the mixture's
stream, shard-interleaved as ``get_batches`` rows are), the window is packed into the rows, and
what does not fit is carried into step ``j + 1`` or then dropped (counted in ``PackedStats``,
the first one logged). Step ``j`` depends on windows ``j - 1`` and ``j`` only: the same
arguments give the same batches and ``start_step=k`` resumes exactly (reading window ``k - 1``
again). Training streams only (``repeat=True``); evaluation decodes one example per row
(``palix.tasks.eval_examples``) at the same per-task resolution.
"""

import logging
from typing import Dict, Iterator, List, Optional

import numpy as np
import seqio
import tensorflow as tf

from palix.tasks import dataset
from palix.tasks import geometry as geometry_lib
from palix.tasks import image_ops
from palix.tasks import image_patches
from palix.tasks import media_io
from palix.tasks import packed_examples as pe
from palix.tasks import packing
from palix.tasks import preprocessors
from palix.tasks import schedule as schedule_lib
from palix.tasks import tf_setup

DataError = media_io.DataError
logger = logging.getLogger(__name__)
_plain = tf.autograph.experimental.do_not_convert


def _media_of(task: seqio.Task) -> preprocessors.DecodeMedia:
  media = task.preprocessors[0] if task.preprocessors else None
  if not isinstance(media, preprocessors.DecodeMedia):
    raise ValueError(f"task {task.name!r}: packed batches need a palix task whose first "
                     f"preprocessor is DecodeMedia (registered with add_task); got {media!r}")
  return media


def _raw_images(features, media: preprocessors.DecodeMedia):
  """``(count, image(i) -> uint8 [h, w, 3])`` of an example's raw media."""
  if "video/path" in features:
    frames = tf.numpy_function(
        lambda path: media_io.read_video(path.decode("utf-8"), media.num_frames),
        [features["video/path"]], tf.uint8, stateful=False)
    frames = tf.ensure_shape(frames, [media.num_frames, None, None, 3])
    return tf.shape(frames)[0], lambda i: frames[i]
  if "image/pixels" in features:
    pixels = features["image/pixels"]
    return tf.shape(pixels)[0], lambda i: pixels[i]
  paths = features["image/paths"]

  def read(i):
    image = tf.numpy_function(lambda p: media_io.read_image(p.decode("utf-8")), [paths[i]],
                              tf.uint8, stateful=False)
    return tf.ensure_shape(image, [None, None, 3])

  return tf.shape(paths)[0], read


def example_patches(features, *, media: preprocessors.DecodeMedia, side: int, patch_size: int):
  """A raw example's images -> ``patches [T, p*p*3]``, ``ys``, ``xs``, ``ts`` ``[T]`` (all images
  back to back, ``ts`` the image index) and ``grids [n, 2]``; the other features pass through.

  Each image: random crop (``media.crop_min_scale``, augmentation splits), aspect-preserving
  resize of its longest side to at most ``side`` px in whole patches, left-right flip (``media.
  flip``, augmentation splits; all images of an example share the crop and the flip), [-1, 1].
  """
  features = dict(features)
  seed, augment = features["example_seed"], features["augment"]
  crop_seed, flip_seed, resize_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  flip = None
  if media.flip:
    flip = tf.logical_and(augment, tf.random.stateless_uniform([], flip_seed) < 0.5)
  options = packing.PackingOptions(patch_size=patch_size,
                                   resolution=packing.Resolution(max_side=side))
  max_tokens = (-(-side // patch_size)) ** 2
  count, image_at = _raw_images(features, media)
  for key in preprocessors.MEDIA_KEYS:
    features.pop(key, None)

  def one(i):
    image = image_at(i)
    if media.crop_min_scale is not None:
      image = tf.cond(augment,
                      lambda: image_ops.random_crop(image, crop_seed, media.crop_min_scale),
                      lambda: image)
    sequence = image_patches.patch_sequence(image, options=options, training=False,
                                            seed=resize_seed, flip=flip)
    pad = max_tokens - sequence["num_tokens"]
    return (tf.pad(sequence["patches"], [[0, pad], [0, 0]]), tf.pad(sequence["ys"], [[0, pad]]),
            tf.pad(sequence["xs"], [[0, pad]]), sequence["grid"], sequence["num_tokens"])

  p2c = patch_size * patch_size * 3
  spec = (tf.TensorSpec([max_tokens, p2c], tf.float32), tf.TensorSpec([max_tokens], tf.int32),
          tf.TensorSpec([max_tokens], tf.int32), tf.TensorSpec([2], tf.int32),
          tf.TensorSpec([], tf.int32))
  patches, ys, xs, grids, counts = tf.map_fn(one, tf.range(count), fn_output_signature=spec)
  real = tf.sequence_mask(counts, max_tokens)
  ts = tf.broadcast_to(tf.range(count)[:, None], [count, max_tokens])
  features.update(patches=tf.reshape(tf.boolean_mask(patches, real), [-1, p2c]),
                  ys=tf.boolean_mask(ys, real), xs=tf.boolean_mask(xs, real),
                  ts=tf.boolean_mask(ts, real), grids=grids, image_tokens=counts)
  return features


def _task_examples(task: seqio.Task, task_id: int, positions, schedule, *, split: str,
                   side: int, patch_size: int, seed: int) -> tf.data.Dataset:
  """One task's examples at ``positions`` -> the flat per-example features of the packer."""
  media = _media_of(task)
  examples = positions.map(
      _plain(lambda p: task.source.example(split, *schedule.locate(p, task_id))),
      num_parallel_calls=tf.data.AUTOTUNE)
  examples = examples.map(
      _plain(lambda ex: example_patches(ex, media=media, side=side, patch_size=patch_size)),
      num_parallel_calls=tf.data.AUTOTUNE)
  with seqio.utils.map_seed_manager(seed):
    for step in task.preprocessors[1:]:  # tokenize, append EOS (and any other text step)
      examples = seqio.utils.add_kwargs_to_transform(
          step, output_features=task.output_features, sequence_length=None)(examples)
  keep = ("patches", "ys", "xs", "ts", "grids", "image_tokens", "inputs", "targets", "record_id")

  def flat(ex):
    out = {k: ex[k] for k in keep if k in ex}
    out["record_id"] = ex.get("record_id", tf.constant(task.name))
    out["inputs"] = tf.cast(out["inputs"], tf.int32)
    out["targets"] = tf.cast(out["targets"], tf.int32)
    out["task_id"] = tf.constant(task_id, tf.int32)
    return out

  return examples.map(_plain(flat), num_parallel_calls=tf.data.AUTOTUNE)


def _window_examples(window, task_names: List[str], clips: List[bool]) -> List[pe.PackedExample]:
  """A padded window of flat features (numpy) -> ``PackedExample`` objects."""
  examples = []
  for i, task_id in enumerate(window["task_id"]):
    counts = window["image_tokens"][i]
    num_images = int((window["grids"][i][:, 0] > 0).sum())
    images, start = [], 0
    for k in range(num_images):
      end = start + int(counts[k])
      images.append(pe.ImageTokens(window["patches"][i, start:end], window["ys"][i, start:end],
                                   window["xs"][i, start:end],
                                   tuple(int(g) for g in window["grids"][i, k])))
      start = end
    inputs, targets = window["inputs"][i], window["targets"][i]
    examples.append(pe.PackedExample(
        tuple(images), inputs[inputs != 0], targets[targets != 0], task_id=int(task_id),
        task_name=task_names[task_id], record_id=window["record_id"][i].decode("utf-8"),
        clip=clips[task_id]))
  return examples


def get_packed_batches(mixture_or_task_name: str, *, split: str, batch_size: int,
                       stream: pe.PackedStream, seed: int = 0, shuffle: bool = True,
                       repeat: bool = True, start_step: int = 0, shard_index: int = 0,
                       num_shards: int = 1, stats: Optional[pe.PackedStats] = None
                       ) -> Iterator[Dict[str, np.ndarray]]:
  """Packed batches of a task or mixture (see the module docstring).

  Args:
    mixture_or_task_name: a registered palix task or mixture.
    split: the split every task reads.
    batch_size: packed rows per batch on this shard.
    stream: row sizes, examples per step, per-task image sides, the prompt separator.
    seed, shuffle, start_step, shard_index, num_shards: as in ``dataset.get_batches``.
    repeat: must be True (training streams).
    stats: a ``PackedStats`` to count into (placed, carried over, dropped, fill per sequence).
  """
  tf_setup.configure_tensorflow()
  stream.check()
  if not repeat:
    raise ValueError("packed PaLI-X batches are for training streams (repeat=True); evaluation "
                     "decodes one example per row at the same per-task resolution")
  if batch_size < 1 or num_shards < 1 or not 0 <= shard_index < num_shards or start_step < 0:
    raise ValueError(f"need batch_size >= 1, num_shards >= 1, 0 <= shard_index < num_shards and "
                     f"start_step >= 0; got {batch_size}, {num_shards}, {shard_index}, "
                     f"{start_step}")
  provider = dataset.get_task_or_mixture(mixture_or_task_name)
  tasks, rates = dataset.tasks_and_rates(provider)
  for task in tasks:
    if split not in task.splits:
      raise ValueError(f"task {task.name!r} has no split {split!r}; it has {list(task.splits)}")
  geometry_lib.check_image_sizes(stream.sides)  # the same per-task sides evaluation uses
  schedule = schedule_lib.Schedule([(f"{t.name}:{split}", t.num_input_examples(split))
                                    for t in tasks], rates, seed=seed, shuffle=shuffle,
                                   repeat=True)
  window = stream.examples_per_step
  resumed = start_step > 0
  first_step = start_step - 1 if resumed else start_step
  per_step = tf.constant(window, tf.int64)

  def position(element):
    step = first_step + element // per_step
    return (step * num_shards + shard_index) * per_step + element % per_step

  positions = tf.data.Dataset.counter().map(_plain(position))
  branches = []
  for task_id, task in enumerate(tasks):
    mine = positions
    if len(tasks) > 1:
      mine = positions.filter(_plain(lambda p, t=task_id: tf.equal(schedule.task_of(p), t)))
    branches.append(_task_examples(task, task_id, mine, schedule, split=split,
                                   side=stream.side_of(task.name),
                                   patch_size=stream.rows.patch_size, seed=seed))
  examples = branches[0]
  if len(tasks) > 1:
    examples = tf.data.Dataset.choose_from_datasets(
        branches, positions.map(_plain(schedule.task_of)))
  windows = examples.padded_batch(window, drop_remainder=True).prefetch(2)
  options = tf.data.Options()
  options.deterministic = True
  arrays = dataset._numpy_batches(windows.with_options(options))  # pylint: disable=protected-access
  names = [task.name for task in tasks]
  clips = [bool(getattr(task.source, "is_video", False)) for task in tasks]
  packer = pe.ExamplePacker(stream.rows, batch_size, stats)
  return _packed(arrays, packer, stream, names, clips, resumed=resumed)


def _packed(arrays, packer: pe.ExamplePacker, stream: pe.PackedStream, names, clips, *,
            resumed: bool):
  carried = []
  windows = (_window_examples(w, names, clips) for w in arrays)
  if resumed:  # the stream starts one window early: rebuild the carry-over of the last step
    carried = packer.leftover(next(windows))
  for window in windows:
    rows, carried = packer.step(window, carried)
    yield pe.pack_rows(rows, stream.rows, stream.separator_id)
    if packer.stats.steps % 500 == 0:
      logger.info("%s", packer.stats.summary())


def task_names(mixture_or_task_name: str) -> List[str]:
  """The tasks of a mixture in ``task_ids`` order (that of ``dataset.tasks_and_rates``)."""
  return [t.name for t in dataset.tasks_and_rates(
      dataset.get_task_or_mixture(mixture_or_task_name))[0]]

