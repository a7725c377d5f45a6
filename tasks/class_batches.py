"""Numpy batches of an image classification task, exactly resumable like ``dataset.get_batches``.

``get_class_batches(name, split=..., batch_size=...)`` reads a task of
``palix.tasks.class_tasks`` and yields, per step, a dict of

===============  =======  ===============  ==============================================
key              dtype    shape            meaning
===============  =======  ===============  ==============================================
``images``       float32  [B, S, S, 3]     pixels in [-1, 1], resized to ``image_size``
``labels``       int32    [B]              class ids
``image_mask``   int32    [B]              1 for a real example, 0 for a padding row
===============  =======  ===============  ==============================================

The example in every slot is a pure function of the arguments and the slot's position
(``palix.tasks.schedule``, one stream), so the guarantees of ``get_batches`` hold: the same
arguments give the same batches, ``start_step=k`` resumes exactly in O(1), and shard ``s`` of
``S`` gets rows ``s*B:(s+1)*B`` of the global batch. ``repeat=False`` visits every example once
and fills the last batch with padding rows (``image_mask`` 0).

Images are resized to ``image_size x image_size``: ``resize_mode='stretch'`` scales each axis,
``'pad'`` keeps the aspect ratio and pads with black. On the ``train`` split tasks with
``flip=True`` flip images left-right with probability 1/2 (seeded per example).

With ``packing`` (NaViT, ``palix.tasks.packing.PackingOptions``) images keep their aspect ratio
and (up to ``Resolution.max_side``) their size: each becomes a patch sequence
(``palix.tasks.image_patches``: resolution sampling and token dropping in training streams) and
the sequences are packed into ``batch_size`` rows of ``seq_len`` tokens with up to
``max_images`` images each. A batch is then the packed arrays of ``palix.tasks.packing`` with
``labels`` ``[B, K]``. The step's images are fixed by the schedule (a window of
``round(images_per_row * batch_size)`` examples per step and shard, positions as above) and
packed by ``packing.WindowPacker``: images that do not fit their step are carried over to the
next one, then trimmed to a gap or dropped; ``packing_stats`` counts all three. Step ``k``
depends on windows ``k - 1`` and ``k`` only, so ``start_step`` still resumes exactly (reading
one extra window). A finite pass (``repeat=False``) packs every example exactly once (no drops,
no resolution sampling, no token dropping); only its rows are padded.
"""

import logging
from typing import Dict, Iterator, Mapping, Optional

import numpy as np
import tensorflow as tf

from palix.tasks import class_tasks
from palix.tasks import dataset
from palix.tasks import image_ops
from palix.tasks import image_patches
from palix.tasks import packing as packing_lib
from palix.tasks import schedule as schedule_lib
from palix.tasks import tf_setup
from palix.tasks.sources import base

DataError = base.DataError
logger = logging.getLogger(__name__)
AUGMENT_SPLITS = ("train",)


def record_id(task_name: str, split: str, index: int) -> str:
  """How errors and reports name an example: ``task:split[index]``."""
  return f"{task_name}:{split}[{index}]"


def load_example(task: class_tasks.ClassTask, split: str, index: int):
  """``(uint8 [h, w, 3], label int32)`` of one example, checked (errors name the example)."""
  pixels, label = task.source.example(split, int(index))
  pixels = np.asarray(pixels)
  where = record_id(task.name, split, int(index))
  if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
    raise DataError(f"{where}: image has shape {pixels.shape} and dtype {pixels.dtype}; expected "
                    "uint8 [height, width, 3]")
  if pixels.shape[0] < 1 or pixels.shape[1] < 1:
    raise DataError(f"{where}: zero-sized image ({pixels.shape[0]}x{pixels.shape[1]} pixels)")
  if not 0 <= int(label) < task.source.num_classes:
    raise DataError(f"{where}: label {label} outside [0, {task.source.num_classes})")
  return pixels, np.int32(label)


def example_stream(task: class_tasks.ClassTask, *, split: str, rows: int, seed: int,
                   shuffle: bool, repeat: bool, start_step: int, shard_index: int,
                   num_shards: int, max_examples: Optional[int] = None) -> tf.data.Dataset:
  """Raw examples in stream order: ``{pixels, label, index, seed, real, augment}``.

  ``rows`` examples per step and shard; position ``p`` of the global stream is row ``i`` of step
  ``j`` on shard ``s`` when ``p = (j * num_shards + s) * rows + i``. Past the end of a finite
  stream (``repeat=False``, up to the end of the last step) examples are padding (``real``
  False, a 1x1 black image). ``max_examples`` limits a finite stream to the split's first
  examples (by index).
  """
  tf_setup.configure_tensorflow()
  if rows < 1 or num_shards < 1 or not 0 <= shard_index < num_shards or start_step < 0:
    raise ValueError(f"need batch_size >= 1, num_shards >= 1, 0 <= shard_index < num_shards and "
                     f"start_step >= 0; got {rows}, {num_shards}, {shard_index}, {start_step}")
  size = task.source.num_examples(split)
  if max_examples is not None:
    if repeat or max_examples < 1:
      raise ValueError(f"max_examples={max_examples} needs repeat=False and a positive count")
    size = min(size, max_examples)
  schedule = schedule_lib.Schedule([(f"{task.name}:{split}", size)], [1.0], seed=seed,
                                   shuffle=shuffle, repeat=repeat)
  per_step = tf.constant(rows, tf.int64)

  def position(element):
    step = start_step + element // per_step
    return (step * num_shards + shard_index) * per_step + element % per_step

  if repeat:
    elements = tf.data.Dataset.counter()
  else:
    num_steps = -(-size // (rows * num_shards))
    elements = tf.data.Dataset.range(max(num_steps - start_step, 0) * rows)
  augment = split in AUGMENT_SPLITS

  def load(p):
    real = tf.equal(schedule.task_of(p), 0)
    index, example_seed = schedule.locate(p, 0)

    def read():
      pixels, label = tf.numpy_function(lambda i: load_example(task, split, i), [index],
                                        [tf.uint8, tf.int32], stateful=False)
      return (tf.ensure_shape(pixels, [None, None, 3]), tf.ensure_shape(label, []))

    def padding():
      return tf.zeros([1, 1, 3], tf.uint8), tf.constant(0, tf.int32)  # same structure as read

    pixels, label = tf.cond(real, read, padding)
    return {"pixels": pixels, "label": label,
            "index": index, "seed": example_seed, "real": real,
            "augment": tf.logical_and(real, tf.constant(augment))}

  plain = tf.autograph.experimental.do_not_convert
  return elements.map(plain(position)).map(plain(load), num_parallel_calls=tf.data.AUTOTUNE)


def _flip_seed(example):
  return tf.random.experimental.stateless_fold_in(example["seed"], 1)


def _square_image(example, *, image_size: int, resize_mode: str, flip: bool):
  image = image_ops.resize(example["pixels"], image_size, resize_mode)
  if flip:
    image = tf.cond(example["augment"], lambda: image_ops.random_flip(image, _flip_seed(example)),
                    lambda: image)
  return {"images": image_ops.to_unit_range(image), "labels": example["label"],
          "image_mask": tf.cast(example["real"], tf.int32)}


def _flip_flag(example, flip: bool):
  if not flip:
    return None
  return tf.logical_and(example["augment"],
                        tf.random.stateless_uniform([], _flip_seed(example)) < 0.5)


def _sequence(example, *, options: packing_lib.PackingOptions, training: bool, flip: bool):
  seed = tf.random.experimental.stateless_fold_in(example["seed"], 2)
  out = image_patches.patch_sequence(example["pixels"], options=options, training=training,
                                     seed=seed, flip=_flip_flag(example, flip))
  out.update(label=example["label"], index=example["index"])
  return out


def _windows(windows, task_name: str, split: str):
  """Padded windows (numpy) -> lists of ``PatchedImage``."""
  for window in windows:
    images = []
    for i, count in enumerate(window["num_tokens"]):
      images.append(packing_lib.PatchedImage(
          patches=window["patches"][i, :count], ys=window["ys"][i, :count],
          xs=window["xs"][i, :count], grid=tuple(int(g) for g in window["grid"][i]),
          features={"labels": window["label"][i]},
          record_id=record_id(task_name, split, int(window["index"][i]))))
    yield images


def _packed_batches(windows, packer: packing_lib.WindowPacker, options, *, resumed: bool):
  pack = lambda rows: packing_lib.pack_rows(
      rows, seq_len=options.seq_len, max_images=options.max_images,
      patch_dim=options.patch_size ** 2 * 3, feature_dtypes={"labels": np.int32})
  carried = []
  if resumed:  # the stream starts one window early: rebuild the carry-over of the last step
    carried = packer.leftover(next(windows))
  for window in windows:
    rows, carried = packer.step(window, carried)
    yield pack(rows)
    if packer.stats.steps % 100 == 0:
      logger.info("%s", packer.stats.summary())
  if packer.carry_all:  # a finite pass: pack what still waits
    for rows in packer.flush(carried):
      yield pack(rows)


def get_class_batches(task_name: str, *, split: str, batch_size: int,
                      feature_lengths: Optional[Mapping[str, int]] = None, image_size: int = 224,
                      resize_mode: str = "stretch", seed: int = 0, shuffle: bool = True,
                      repeat: bool = True, start_step: int = 0, shard_index: int = 0,
                      num_shards: int = 1, max_examples: Optional[int] = None,
                      packing: Optional[packing_lib.PackingOptions] = None,
                      packing_stats: Optional[packing_lib.PackingStats] = None
                      ) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of a classification task (see the module docstring).

  Args:
    task_name: a task of ``palix.tasks.class_tasks`` (``list_class_tasks()``).
    split: ``train`` or ``test`` for the built-ins.
    batch_size: rows per batch on this shard (the global batch is ``batch_size * num_shards``).
    feature_lengths: ignored (a classifier has no tokens); the trainer passes its
      ``TASK_FEATURE_LENGTHS`` to every batch source.
    image_size: side of the square images.
    resize_mode: ``stretch`` or ``pad`` (``palix.tasks.image_ops.resize``).
    seed: shuffling and augmentation.
    shuffle, repeat, start_step, shard_index, num_shards: as in ``dataset.get_batches``.
    max_examples: a finite pass (``repeat=False``) over the split's first ``max_examples``
      examples only.
    packing: pack images at their own size and aspect ratio (see the module docstring);
      ``image_size`` and ``resize_mode`` then do not apply.
    packing_stats: a ``PackingStats`` to count into (placed, carried over, dropped, fill).
  """
  del feature_lengths
  if resize_mode not in image_ops.RESIZE_MODES:
    raise ValueError(f"resize_mode must be one of {image_ops.RESIZE_MODES}; got {resize_mode!r}")
  task = class_tasks.get_class_task(task_name)
  if packing is not None:
    return _get_packed_batches(task, split=split, rows=batch_size, seed=seed, shuffle=shuffle,
                               repeat=repeat, start_step=start_step, shard_index=shard_index,
                               num_shards=num_shards, max_examples=max_examples,
                               options=packing, stats=packing_stats)
  examples = example_stream(task, split=split, rows=batch_size, seed=seed, shuffle=shuffle,
                            repeat=repeat, start_step=start_step, shard_index=shard_index,
                            num_shards=num_shards, max_examples=max_examples)
  square = lambda ex: _square_image(ex, image_size=image_size, resize_mode=resize_mode,
                                    flip=task.flip)
  batches = examples.map(tf.autograph.experimental.do_not_convert(square),
                         num_parallel_calls=tf.data.AUTOTUNE)
  batches = batches.batch(batch_size, drop_remainder=True).prefetch(2)
  options = tf.data.Options()
  options.deterministic = True
  # dataset's iterator: clean DataError messages, and closed at exit (numpy_function threads).
  return dataset._numpy_batches(batches.with_options(options))  # pylint: disable=protected-access


def _get_packed_batches(task: class_tasks.ClassTask, *, split: str, rows: int, seed: int,
                        shuffle: bool, repeat: bool, start_step: int, shard_index: int,
                        num_shards: int, max_examples: Optional[int],
                        options: packing_lib.PackingOptions,
                        stats: Optional[packing_lib.PackingStats]):
  options.check()
  if not repeat and start_step:
    raise ValueError("a finite packed pass (repeat=False) packs every example once from the "
                     "start; start_step must be 0")
  if not repeat and num_shards > 1:
    raise ValueError("a finite packed pass (repeat=False) runs in one process: shards would "
                     "yield different numbers of packed steps")
  training = repeat and split in AUGMENT_SPLITS
  window = options.window(rows)
  resumed = repeat and start_step > 0
  examples = example_stream(task, split=split, rows=window, seed=seed, shuffle=shuffle,
                            repeat=repeat, start_step=start_step - 1 if resumed else start_step,
                            shard_index=shard_index, num_shards=num_shards,
                            max_examples=max_examples)
  plain = tf.autograph.experimental.do_not_convert
  examples = examples.filter(plain(lambda ex: ex["real"]))
  sequences = examples.map(
      plain(lambda ex: _sequence(ex, options=options, training=training, flip=task.flip)),
      num_parallel_calls=tf.data.AUTOTUNE)
  windows = sequences.padded_batch(window, drop_remainder=False).prefetch(2)
  data_options = tf.data.Options()
  data_options.deterministic = True
  arrays = dataset._numpy_batches(windows.with_options(data_options))  # pylint: disable=protected-access
  packer = packing_lib.WindowPacker(
      rows=rows, seq_len=options.seq_len, max_images=options.max_images, stats=stats,
      carry_all=not repeat, min_kept_share=options.min_kept_share if training else None)
  return _packed_batches(_windows(arrays, task.name, split), packer, options, resumed=resumed)
