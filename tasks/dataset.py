"""The batch API of the trainer and evaluator: numpy batches of the model keys, exactly resumable.

``get_batches(name, split=..., batch_size=..., feature_lengths=...)`` yields dicts with the keys
of ``palix/models/base.py`` (``images``, ``image_mask``, ``encoder_input_tokens``,
``decoder_input_tokens``, ``decoder_target_tokens``, ``decoder_loss_weights``). The example in
every slot is a pure function of the arguments and the slot's position (``palix.tasks.schedule``),
so:

* the same arguments give the same batches;
* ``start_step=k`` yields exactly what a fresh iterator yields from its k-th batch on;
* shard ``s`` of ``S`` gets rows ``s*B:(s+1)*B`` of the global batch of ``S*B`` rows; shards are
  disjoint and together equal the unsharded stream with ``batch_size=S*B``.

With ``batch_parts=True`` a batch is a tuple of parts, one per geometry of the mixture's tasks
(``palix.tasks.geometry``): every task gets its share of the rows in every batch, shaped by its
own image count and lengths rather than the largest of the mixture. The same guarantees hold.

``repeat=False`` visits every example of the split(s) once; the last batch is filled with all-zero
rows (``image_mask`` 0, ``decoder_loss_weights`` 0), so every batch has ``batch_size`` rows and all
shards yield the same number of batches. With ``keep_raw=True`` (one task, one pass: evaluation)
each row also carries its example's raw fields under ``raw/`` (``feature_converter``).
"""

import atexit
import gc
import math
import re
import weakref
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import seqio
import tensorflow as tf

from palix.tasks import feature_converter as converter_lib
from palix.tasks import geometry as geometry_lib
from palix.tasks import preprocessors
from palix.tasks import registry
from palix.tasks import schedule as schedule_lib
from palix.tasks import tf_setup
from palix.tasks.sources import base

DataError = base.DataError
Provider = Union[seqio.Task, seqio.Mixture]
# A batch of the model's keys, or with ``batch_parts`` a tuple of them (one per geometry).
Batch = Union[Dict[str, np.ndarray], Tuple[Dict[str, np.ndarray], ...]]


def get_task_or_mixture(name: str) -> Provider:
  """The registered palix task or mixture called ``name`` (built-ins register on first use)."""
  registry.ensure_registered()
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  known = list_tasks()
  close = [k for k in known if name.split("_")[0] in k][:5]
  raise ValueError(f"no task or mixture {name!r}" + (f"; did you mean one of {close}?" if close
                                                    else f"; registered: {known}"))


def list_tasks(include_mixtures: bool = True) -> List[str]:
  """Names usable with :func:`get_batches`: tasks with a palix source, then mixtures."""
  registry.ensure_registered()
  names = sorted(n for n in seqio.TaskRegistry.names()
                 if isinstance(seqio.TaskRegistry.get(n).source, base.ExampleSource))
  if include_mixtures:
    names += sorted(n for n in seqio.MixtureRegistry.names()
                    if all(t.name in names for t in seqio.MixtureRegistry.get(n).tasks))
  return names


def tasks_and_rates(provider: Provider) -> Tuple[List[seqio.Task], List[float]]:
  """Leaf tasks of a task or mixture with their flattened mixing rates (zero rates dropped)."""
  if isinstance(provider, seqio.Task):
    return [provider], [1.0]
  pairs = [(t, float(provider.get_rate(t))) for t in provider.tasks]
  pairs = [(t, r) for t, r in pairs if r > 0]
  if not pairs:
    raise ValueError(f"mixture {provider.name!r} has no task with a positive rate")
  return [t for t, _ in pairs], [r for _, r in pairs]


def make_dataset(mixture_or_task_name: str, *, split: str, batch_size: int,
                 feature_lengths: Mapping[str, int], num_images: int = 1, image_size: int = 224,
                 seed: int = 0, shuffle: bool = True, repeat: bool = True, start_step: int = 0,
                 shard_index: int = 0, num_shards: int = 1, overflow: str = "error",
                 batch_parts: bool = False,
                 feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]] = None,
                 counter: Optional[converter_lib.TruncationCounter] = None,
                 keep_raw: bool = False,
                 image_size_by_task: Optional[Mapping[str, int]] = None) -> tf.data.Dataset:
  """The ``tf.data`` pipeline behind :func:`get_batches` (same arguments)."""
  tf_setup.configure_tensorflow()
  if batch_size < 1 or num_shards < 1 or not 0 <= shard_index < num_shards or start_step < 0:
    raise ValueError(f"need batch_size >= 1, num_shards >= 1, 0 <= shard_index < num_shards and "
                     f"start_step >= 0; got {batch_size}, {num_shards}, {shard_index}, "
                     f"{start_step}")
  provider = get_task_or_mixture(mixture_or_task_name)
  tasks, rates = tasks_and_rates(provider)
  for task in tasks:
    if not isinstance(task.source, base.ExampleSource):
      raise ValueError(f"task {task.name!r} does not read from a palix ExampleSource; "
                       "get_batches needs random access (see docs/data.md)")
    if split not in task.splits:
      raise ValueError(f"task {task.name!r} has no split {split!r}; it has {list(task.splits)}")
  if keep_raw and (repeat or batch_parts or len(tasks) > 1):
    raise ValueError("keep_raw is for one pass over one task (repeat=False, no batch_parts): "
                     f"{mixture_or_task_name!r} has {len(tasks)} tasks, repeat={repeat}")
  streams = [(f"{t.name}:{split}", t.num_input_examples(split)) for t in tasks]
  schedule = schedule_lib.Schedule(streams, rates, seed=seed, shuffle=shuffle, repeat=repeat)
  geometry_lib.check_lengths_by_task(feature_lengths_by_task, feature_lengths)
  geometry_lib.check_image_sizes(image_size_by_task)
  counter = counter or converter_lib.TruncationCounter()
  if batch_parts:
    if not repeat:
      raise ValueError("batch_parts is for training streams (repeat=True); a finite stream is "
                       "read task by task (palix.tasks.eval_examples)")
    geometries = [geometry_lib.task_geometry(
        t.name, num_images=num_images, feature_lengths=feature_lengths,
        feature_lengths_by_task=feature_lengths_by_task,
        image_size_by_task=image_size_by_task) for t in tasks]
    return _batch_parts(
        tasks, rates, schedule, geometries, split=split, batch_size=batch_size,
        image_size=image_size, seed=seed, start_step=start_step, shard_index=shard_index,
        num_shards=num_shards, overflow=overflow, counter=counter)
  for name, value in (("feature_lengths_by_task", feature_lengths_by_task),
                      ("image_size_by_task", image_size_by_task)):
    if value:
      raise ValueError(f"{name} needs batch_parts=True: a batch without parts has one geometry "
                       "for all its tasks")

  rows = tf.constant(batch_size, tf.int64)

  def position(element):
    step = start_step + element // rows
    return (step * num_shards + shard_index) * rows + element % rows

  if repeat:
    elements = tf.data.Dataset.counter()
  else:
    num_batches = math.ceil(schedule.total / (batch_size * num_shards))
    elements = tf.data.Dataset.range(max(num_batches - start_step, 0) * batch_size)
  positions = elements.map(_plain(position))

  single = len(tasks) == 1 and repeat
  shared_geometry = geometry_lib.Geometry(num_images, dict(feature_lengths))
  branches = []
  for task_id, task in enumerate(tasks):
    branch = positions
    if not single:  # each branch keeps its own task's positions; choose_from_datasets re-merges
      branch = positions.filter(_plain(lambda p, t=task_id: tf.equal(schedule.task_of(p), t)))
    branch = branch.map(
        _plain(lambda p, t=task_id, task=task: task.source.example(split, *schedule.locate(p, t))),
        num_parallel_calls=tf.data.AUTOTUNE)
    features = _model_features(task, branch, shared_geometry, image_size=image_size, seed=seed,
                               overflow=overflow, counter=counter, keep_raw=keep_raw)
    branches.append(_with_task_id(features, task_id) if repeat else features)
  if not repeat:
    padding = converter_lib.zero_example(branches[0].element_spec)
    branches.append(tf.data.Dataset.from_tensors(padding).repeat())
  if single:
    dataset = branches[0]
  else:
    choices = positions.map(_plain(schedule.task_of))
    dataset = tf.data.Dataset.choose_from_datasets(branches, choices)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(2)
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def _model_features(task: seqio.Task, examples: tf.data.Dataset, geometry: geometry_lib.Geometry,
                    *, image_size: int, seed: int, overflow: str,
                    counter: converter_lib.TruncationCounter,
                    keep_raw: bool = False) -> tf.data.Dataset:
  """A task's source examples -> its preprocessors -> the model's keys in ``geometry`` (and, with
  ``keep_raw``, the examples' raw fields)."""
  sequence_length = dict(geometry.feature_lengths)
  sequence_length[preprocessors.IMAGE_SIZE_KEY] = image_size
  if keep_raw:
    examples = examples.map(_plain(converter_lib.copy_raw_fields))
  examples = task.preprocess_precache(examples, seed=seed)
  examples = task.preprocess_postcache(examples, sequence_length=sequence_length, seed=seed)
  converter = converter_lib.PaliXFeatureConverter(geometry.num_images, image_size, overflow,
                                                  task_name=task.name, counter=counter,
                                                  keep_raw=keep_raw,
                                                  video=getattr(task.source, "is_video", False))
  return converter(examples, geometry.feature_lengths).prefetch(tf.data.AUTOTUNE)


def _with_task_id(features: tf.data.Dataset, task_id: int) -> tf.data.Dataset:
  """Training rows also carry ``task_ids`` (the task's index in the mixture, that of
  :func:`tasks_and_rates`): the trainer reports loss and accuracy per task."""
  return features.map(_plain(lambda ex: {**ex, "task_ids": tf.constant(task_id, tf.int32)}))


def part_rows(rates: List[float], batch_size: int) -> List[int]:
  """Rows per task in every batch of ``batch_parts``: the rates' largest-remainder shares."""
  if batch_size < len(rates):
    raise ValueError(f"batch_parts gives every task at least one row of every batch; batch_size "
                     f"{batch_size} (per shard) is less than the {len(rates)} tasks")
  return [int(r) for r in schedule_lib.block_quotas(rates, batch_size)]


def _batch_parts(tasks: List[seqio.Task], rates: List[float], schedule: schedule_lib.Schedule,
                 geometries: List[geometry_lib.Geometry], *, split: str, batch_size: int,
                 image_size: int, seed: int, start_step: int, shard_index: int, num_shards: int,
                 overflow: str, counter: converter_lib.TruncationCounter) -> tf.data.Dataset:
  """Batch ``j`` is a tuple of parts, one per distinct geometry (in task order).

  Task ``t`` has ``R_t`` rows of every shard's batch (:func:`part_rows`); in batch ``j`` shard
  ``s`` takes the task's local examples ``(j*S + s)*R_t .. + R_t - 1``, which run through its
  epochs as in the mixed stream. A part concatenates its tasks' rows in task order.
  """
  rows = part_rows(rates, batch_size)
  steps = tf.data.Dataset.counter(start_step)
  parts: Dict[tuple, List[tf.data.Dataset]] = {}
  for task_id, (task, geometry, count) in enumerate(zip(tasks, geometries, rows)):

    def local_examples(step, count=count):
      first = (step * num_shards + shard_index) * count
      return first + tf.range(count, dtype=tf.int64)

    examples = steps.map(_plain(local_examples)).unbatch().map(
        _plain(lambda n, t=task_id, task=task: task.source.example(split,
                                                                   *schedule.example_at(n, t))),
        num_parallel_calls=tf.data.AUTOTUNE)
    features = _with_task_id(_model_features(
        task, examples, geometry, image_size=geometry.image_size or image_size, seed=seed,
        overflow=overflow, counter=counter), task_id)
    parts.setdefault(geometry.key(), []).append(features.batch(count, drop_remainder=True))
  concatenated = []
  for members in parts.values():
    part = members[0]
    if len(members) > 1:
      part = tf.data.Dataset.zip(tuple(members)).map(
          _plain(lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}))
    concatenated.append(part)
  options = tf.data.Options()
  options.deterministic = True
  return tf.data.Dataset.zip(tuple(concatenated)).prefetch(2).with_options(options)


def get_batches(mixture_or_task_name: str, *, split: str, batch_size: int,
                feature_lengths: Mapping[str, int], num_images: int = 1, image_size: int = 224,
                seed: int = 0, shuffle: bool = True, repeat: bool = True, start_step: int = 0,
                shard_index: int = 0, num_shards: int = 1, overflow: str = "error",
                batch_parts: bool = False,
                feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]] = None,
                keep_raw: bool = False,
                image_size_by_task: Optional[Mapping[str, int]] = None) -> Iterator[Batch]:
  """Numpy batches of the model's keys for a task or mixture (see the module docstring).

  Args:
    mixture_or_task_name: a registered palix task or mixture (:func:`list_tasks`).
    split: the split every task of the mixture reads.
    batch_size: rows per batch on this shard (the global batch is ``batch_size * num_shards``).
    feature_lengths: ``{'inputs': Le, 'targets': Ld}`` token lengths (EOS included).
    num_images: image slots per example (N); video tasks need N >= their frame count.
    image_size: images are resized to ``image_size x image_size`` (S); not taken from the task,
      so one mixture can be trained at several resolutions.
    seed: seeds shuffling, mixing and augmentation.
    shuffle: permute examples (per epoch) and mixture slots (per block).
    repeat: endless stream (training) or one pass with zero-padded last batch (evaluation).
    start_step: skip to this batch index in O(1) (exact resumption).
    shard_index, num_shards: this process's disjoint share of the global batch.
    overflow: ``error`` or ``truncate`` for token sequences longer than ``feature_lengths``.
    batch_parts: yield each batch as a tuple of parts, one per distinct task geometry
      (``palix.tasks.geometry``: the task's own image count and ``feature_lengths_by_task``
      lengths); every task has its rates' share of the rows (:func:`part_rows`) in every batch,
      so no compute goes to another task's padding. Training streams only (``repeat=True``).
    feature_lengths_by_task: ``{task: {'inputs': ..., 'targets': ...}}``, each at most
      ``feature_lengths``; tasks left out use ``feature_lengths``.
    keep_raw: one pass over one task (``repeat=False``) whose rows also carry their examples'
      raw fields under ``raw/`` (evaluation, ``palix.tasks.eval_examples``).
    image_size_by_task: ``{task: S}`` for tasks trained at another resolution than
      ``image_size`` (``batch_parts`` only).

  Training streams (``repeat=True``) also carry ``task_ids`` ``[B]``: each row's task, as the
  index of :func:`tasks_and_rates`.
  """
  dataset = make_dataset(
      mixture_or_task_name, split=split, batch_size=batch_size, feature_lengths=feature_lengths,
      num_images=num_images, image_size=image_size, seed=seed, shuffle=shuffle, repeat=repeat,
      start_step=start_step, shard_index=shard_index, num_shards=num_shards, overflow=overflow,
      batch_parts=batch_parts, feature_lengths_by_task=feature_lengths_by_task, keep_raw=keep_raw,
      image_size_by_task=image_size_by_task)
  return _numpy_batches(dataset)


def _plain(fn):
  """Marks a dataset function as plain graph code: autograph would rewrite the Python loops that
  build lookup tables into slow graph loops."""
  return tf.autograph.experimental.do_not_convert(fn)


# Batch generators still open. Their iterators are destroyed at exit (atexit runs before the
# interpreter shuts down): destroyed during shutdown, a tf.data iterator waits for worker threads
# that can no longer run their Python ops (``tf.numpy_function``), and the process hangs.
_OPEN_GENERATORS = weakref.WeakSet()


@atexit.register
def _close_open_generators():
  for generator in list(_OPEN_GENERATORS):
    generator.close()


def _numpy_batches(dataset: tf.data.Dataset) -> Iterator[Batch]:
  generator = _iterate(dataset)
  _OPEN_GENERATORS.add(generator)
  return generator


def _iterate(dataset: tf.data.Dataset) -> Iterator[Batch]:
  """Numpy batches of ``dataset``; a pipeline error ends the stream with a ``DataError``.

  The failed iterator is destroyed before the ``DataError`` is raised, and nothing refers to it
  afterwards (the error has no ``__context__``). Otherwise the TF error's traceback would keep it
  alive until interpreter shutdown, where destroying it hangs (see ``_OPEN_GENERATORS``).
  """
  iterator = dataset.as_numpy_iterator()
  try:
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        message = _clean_tf_message(e.message)
        break
      yield batch
  finally:
    del iterator
  gc.collect()  # the TF error's frames and the iterator form reference cycles: free them now
  raise DataError(message)


def _clean_tf_message(message: str) -> str:
  """The useful part of a TF error: our DataError text or assertion message, without the graph."""
  found = re.search(r"DataError: (.*)", message)
  if found:
    return found.group(1).strip()
  message = re.sub(r"\s*\[\[\{\{node .*", "", message, flags=re.S)
  found = re.search(r"assertion failed: (.*)", message, flags=re.S)
  if found:  # tf.debugging.Assert prints its data as "[a] [b] ..."
    message = re.sub(r"\]\s*\[", " ", found.group(1)).replace("\\'", "'").strip().strip("[]")
  return message.replace("\n", " ").strip()
