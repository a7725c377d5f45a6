"""Random-access example sources: the seqio ``DataSource`` every palix task reads from.

A source knows, per split, how many examples it has and how to build example ``i`` as a dict of
tensors (the *raw schema* below). Random access is what makes the batch stream exactly resumable:
``palix.tasks.dataset`` decides which example fills each batch slot and asks the source for it.

Raw schema (what preprocessors see):

=================  ==================  ==================================================
key                dtype / shape       meaning
=================  ==================  ==================================================
``inputs``         string []           the prompt, e.g. ``answer en what color is it?``
``targets``        string []           the target text
``record_id``      string []           where the example came from (``file:line``, ...)
``image/paths``    string [n]          image files, decoded by ``DecodeMedia``; *or*
``image/pixels``   uint8 [n, h, w, 3]  decoded images (generated sources); *or*
``video/path``     string []           a clip file or a folder of frames
``example_seed``   int64 [2]           per-example seed for augmentation (added here)
``augment``        bool []             True on the source's augmentation splits
=================  ==================  ==================================================

Sources may add fixed-shape features for metrics (e.g. VQAv2's ten ``answers``; a
``PythonSource``'s ``extra_specs``); the feature converter passes them on only for evaluation
(``keep_raw``).
"""

import abc
import dataclasses
import logging
import os
import threading
import zlib
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import seqio
import tensorflow as tf

from palix.tasks import media_io

DataError = media_io.DataError
RecordFn = Callable[[tf.Tensor], Dict[str, tf.Tensor]]


def stable_hash(text: str) -> int:
  """A process-independent 31-bit hash (Python's ``hash`` is salted per process)."""
  return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def example_seed(seed: int, stream: str, position) -> tf.Tensor:
  """Stateless seed for example ``position`` of stream ``stream`` (a task/split name)."""
  base = tf.constant([seed, stable_hash(stream)], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64), alg="philox")


class ExampleSource(seqio.DataSource):
  """Base of every palix source: random access by index, lazy loading, seqio compatible."""

  def __init__(self, splits: Sequence[str], augment_splits: Sequence[str] = ("train",)):
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=False)
    self._augment_splits = tuple(augment_splits)
    self._record_fns: Dict[str, RecordFn] = {}
    self._lock = threading.RLock()

  # --- what a subclass implements ---------------------------------------------------------
  @abc.abstractmethod
  def _num_examples(self, split: str) -> int:
    """Number of examples in ``split`` (may load the split)."""

  @abc.abstractmethod
  def _make_record_fn(self, split: str) -> RecordFn:
    """A TF function ``index (int64 scalar) -> raw example`` for ``split``."""

  @abc.abstractmethod
  def text_pairs(self, split: str) -> Iterator[Tuple[str, str]]:
    """``(inputs, targets)`` strings of every example (vocabulary training, statistics)."""

  @property
  def images_per_example(self) -> Optional[int]:
    """Fixed number of images (frames) per example, or None if it varies (see the loader)."""
    return 1

  @property
  def is_video(self) -> bool:
    """Whether an example's images are the frames of one video clip, in order (a PaLI-X with a
    time embedding encodes them as one ViT sequence: ``image_mask`` 2 after the first frame)."""
    return False

  @property
  def augment_splits(self) -> Tuple[str, ...]:
    """Splits whose examples get ``augment=True`` (random crops/flips where the task has them)."""
    return self._augment_splits

  # --- seqio DataSource API --------------------------------------------------------------
  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def num_input_examples(self, split: str) -> int:
    self._check_split(split)
    return self._num_examples(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    """Examples in index order (or a seeded permutation); for plain seqio use.

    ``palix.tasks.dataset.get_batches`` does not use this: it indexes examples itself.
    """
    num = self.num_input_examples(split)
    seed = 0 if seed is None else int(seed)
    positions = tf.data.Dataset.range(num)
    if shard_info is not None:
      positions = positions.shard(shard_info.num_shards, shard_info.index)

    def lookup(position):
      index = position
      if shuffle:
        index = tf.random.experimental.index_shuffle(position, seed=[seed, 1], max_index=num - 1)
      return self.example(split, index, example_seed(seed, f"{split}", position))

    return positions.map(tf.autograph.experimental.do_not_convert(lookup),
                         num_parallel_calls=tf.data.AUTOTUNE)

  # --- shared -----------------------------------------------------------------------------
  def example(self, split: str, index: tf.Tensor, seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Raw example ``index`` of ``split`` plus ``example_seed`` and ``augment``."""
    features = dict(self.record_fn(split)(tf.cast(index, tf.int64)))
    features["example_seed"] = tf.cast(seed, tf.int64)
    features["augment"] = tf.constant(split in self._augment_splits)
    return features

  def record_fn(self, split: str) -> RecordFn:
    self._check_split(split)
    with self._lock:
      if split not in self._record_fns:
        with tf.init_scope():  # tables become eager constants, shareable by every pipeline
          self._record_fns[split] = self._make_record_fn(split)
      return self._record_fns[split]

  def _check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(f"{type(self).__name__} has no split {split!r}; it has {list(self.splits)}")


@dataclasses.dataclass(frozen=True)
class Record:
  """One example of a file-based source, before it becomes tensors."""
  inputs: str
  targets: str
  record_id: str
  image_paths: Tuple[str, ...] = ()
  video_path: str = ""
  extras: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)


RecordOrError = Union[Record, DataError]


@dataclasses.dataclass
class LoadReport:
  """What loading one split did: kept and skipped records, with the first few reasons."""
  num_examples: int = 0
  num_skipped: int = 0
  skipped_examples: List[str] = dataclasses.field(default_factory=list)
  notes: List[str] = dataclasses.field(default_factory=list)  # dataset rules applied, with counts


class TableSource(ExampleSource):
  """A source whose records are parsed from files into an in-memory table on first use.

  Subclasses yield :class:`Record` objects, or :class:`DataError` for a bad record. By default
  the first bad record raises; with ``skip_bad_records=True`` bad records are left out, counted
  in :meth:`load_report` and logged as a warning. Image files are checked at load time (header
  and PNG checksums) unless ``verify_images=False``; a file that still fails to decode during
  iteration raises a :class:`DataError` naming it.
  """

  def __init__(self, splits: Sequence[str], *, skip_bad_records: bool = False,
               verify_images: bool = True, num_frames: int = 8,
               augment_splits: Sequence[str] = ("train",)):
    super().__init__(splits, augment_splits)
    self._skip_bad_records = skip_bad_records
    self._verify_images = verify_images
    self.num_frames = num_frames
    self._tables: Dict[str, List[Record]] = {}
    self._reports: Dict[str, LoadReport] = {}
    self._verified: Dict[str, Optional[DataError]] = {}
    self._notes: List[str] = []

  @abc.abstractmethod
  def _iter_records(self, split: str) -> Iterator[RecordOrError]:
    """Parse the split's files, yielding a Record or a DataError per example."""

  def records(self, split: str) -> List[Record]:
    """The validated records of ``split`` (loaded once)."""
    self._check_split(split)
    with self._lock:
      if split not in self._tables:
        self._tables[split], self._reports[split] = self._load(split)
      return self._tables[split]

  def load_report(self, split: str) -> LoadReport:
    self.records(split)
    return self._reports[split]

  def _load(self, split: str) -> Tuple[List[Record], LoadReport]:
    report, kept = LoadReport(), []
    self._notes = report.notes
    for item in self._iter_records(split):
      error = item if isinstance(item, DataError) else self._validate(item)
      if error is None:
        kept.append(item)
        continue
      if not self._skip_bad_records:
        raise error
      report.num_skipped += 1
      if len(report.skipped_examples) < 10:
        report.skipped_examples.append(str(error))
    if not kept:
      raise DataError(f"{type(self).__name__} split {split!r}: no usable examples"
                      + (f" ({report.num_skipped} bad records skipped)" if report.num_skipped
                         else ""))
    kinds = {(bool(r.video_path), tuple(sorted(r.extras))) for r in kept}
    if len(kinds) > 1:
      raise DataError(f"{type(self).__name__} split {split!r}: records mix videos and images or "
                      "have different extra fields; keep one kind per file")
    report.num_examples = len(kept)
    for note in report.notes:
      logging.warning("%s split %r: %s", type(self).__name__, split, note)
    if report.num_skipped:
      logging.warning("%s split %r: skipped %d bad records (skip_bad_records=True); first: %s",
                      type(self).__name__, split, report.num_skipped, report.skipped_examples[0])
    return kept, report

  def note(self, text: str) -> None:
    """Records a dataset rule applied while loading (e.g. 'left out 3 images without boxes')."""
    self._notes.append(text)

  def _validate(self, record: Record) -> Optional[DataError]:
    if not record.targets.strip():
      return DataError(f"{record.record_id}: empty target")
    if not record.image_paths and not record.video_path:
      return DataError(f"{record.record_id}: no image or video")
    if record.video_path and not os.path.exists(record.video_path):
      return DataError(f"{record.record_id}: {record.video_path}: video not found")
    if self._verify_images:
      for path in record.image_paths:
        if path not in self._verified:
          try:
            media_io.verify_image(path)
            self._verified[path] = None
          except DataError as e:
            self._verified[path] = e
        if self._verified[path] is not None:
          return DataError(f"{record.record_id}: {self._verified[path]}")
    return None

  def _num_examples(self, split: str) -> int:
    return len(self.records(split))

  @property
  def images_per_example(self) -> Optional[int]:
    loaded = [r for records in self._tables.values() for r in records]
    if not loaded:
      return None
    counts = {self.num_frames if r.video_path else len(r.image_paths) for r in loaded}
    return counts.pop() if len(counts) == 1 else None

  @property
  def is_video(self) -> bool:
    loaded = [r for records in self._tables.values() for r in records]
    return bool(loaded) and bool(loaded[0].video_path)  # as _make_record_fn decides

  def text_pairs(self, split: str) -> Iterator[Tuple[str, str]]:
    for record in self.records(split):
      yield record.inputs, record.targets

  def _make_record_fn(self, split: str) -> RecordFn:
    records = self.records(split)
    strings = lambda values: tf.constant(np.array(values, dtype=object), tf.string)
    inputs = strings([r.inputs for r in records])
    targets = strings([r.targets for r in records])
    record_ids = strings([r.record_id for r in records])
    extras = {key: strings([list(r.extras[key]) for r in records]) for key in records[0].extras}
    if records[0].video_path:
      videos = strings([r.video_path for r in records])
      media = lambda index: {"video/path": tf.gather(videos, index)}
    else:
      width = max(len(r.image_paths) for r in records)
      paths = strings([list(r.image_paths) + [""] * (width - len(r.image_paths)) for r in records])
      counts = tf.constant([len(r.image_paths) for r in records], tf.int64)
      media = lambda index: {"image/paths": tf.gather(paths, index)[:tf.gather(counts, index)]}

    def record(index):
      features = {"inputs": tf.gather(inputs, index), "targets": tf.gather(targets, index),
                  "record_id": tf.gather(record_ids, index)}
      features.update(media(index))
      features.update({key: tf.gather(values, index) for key, values in extras.items()})
      return features

    return record


@dataclasses.dataclass(frozen=True)
class PythonExample:
  pixels: np.ndarray  # uint8 [n, h, w, 3]
  inputs: str
  targets: str
  extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # extra_specs' keys


class PythonSource(ExampleSource):
  """A source whose examples are computed in Python from (split, index, data seed).

  Example ``i`` is a pure function of ``(split, i, data_seed)``, so it is the same in every run,
  in every process, in any order of access. Pixels cross into TensorFlow via
  ``tf.numpy_function``.
  """

  def __init__(self, splits: Sequence[str], num_examples: Optional[Mapping[str, int]],
               data_seed: int = 0, augment_splits: Sequence[str] = ("train",)):
    super().__init__(splits, augment_splits)
    self._sizes = dict(num_examples or {})
    self.data_seed = data_seed

  @property
  @abc.abstractmethod
  def pixel_shape(self) -> Tuple[int, int, int, int]:
    """``(n, h, w, 3)`` of every example's pixels."""

  @abc.abstractmethod
  def make_example(self, split: str, index: int) -> PythonExample:
    """Example ``index`` of ``split``."""

  @property
  def images_per_example(self) -> Optional[int]:
    return self.pixel_shape[0]

  @property
  def extra_specs(self) -> Mapping[str, tf.TensorSpec]:
    """Fixed-shape features every example adds for metrics (``PythonExample.extras``), e.g. exact
    boxes; none by default."""
    return {}

  def rng(self, split: str, index: int) -> np.random.Generator:
    """The generator that makes example ``index``: seeded by (data seed, split, index)."""
    return np.random.default_rng([self.data_seed, stable_hash(split), int(index)])

  def _num_examples(self, split: str) -> int:
    return self._sizes[split]

  def text_pairs(self, split: str) -> Iterator[Tuple[str, str]]:
    for index in range(self.num_input_examples(split)):
      example = self.make_example(split, index)
      yield example.inputs, example.targets

  def _make_record_fn(self, split: str) -> RecordFn:
    num = self.num_input_examples(split)
    specs = dict(self.extra_specs)

    def make(index):
      index = int(index)
      if not 0 <= index < num:
        raise IndexError(f"{type(self).__name__} split {split!r}: index {index} outside [0, {num})")
      example = self.make_example(split, index)
      extras = [np.asarray(example.extras[k], object if s.dtype == tf.string
                           else s.dtype.as_numpy_dtype) for k, s in specs.items()]
      return (example.pixels, np.bytes_(example.inputs.encode()),
              np.bytes_(example.targets.encode()), *extras)

    def record(index):
      pixels, inputs, targets, *extras = tf.numpy_function(
          make, [index], [tf.uint8, tf.string, tf.string] + [s.dtype for s in specs.values()],
          stateful=False)
      pixels.set_shape(self.pixel_shape)
      inputs.set_shape([])
      targets.set_shape([])
      record_id = tf.strings.join([f"{type(self).__name__}:{split}[",
                                   tf.strings.as_string(index), "]"])
      features = {"inputs": inputs, "targets": targets, "record_id": record_id,
                  "image/pixels": pixels}
      for (key, spec), value in zip(specs.items(), extras):
        value.set_shape(spec.shape)
        features[key] = value
      return features

    return record
