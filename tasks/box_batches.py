"""Detection batches for the OWL detector (``palix.models.owl``), exactly resumable.

``get_box_batches(name, split=..., batch_size=..., feature_lengths=...)`` reads a task of
``palix.tasks.box_tasks`` and yields, per step, a dict of

=================  =======  ===============  ==================================================
key                dtype    shape            meaning
=================  =======  ===============  ==================================================
``images``         float32  [B, S, S, 3]     pixels in [-1, 1] (``image_size`` S)
``query_tokens``   int32    [B, Q, L]        the image's text queries; all-zero rows = padding
``boxes``          float32  [B, M, 4]        instance boxes, normalised cxcywh
``box_labels``     int32    [B, M]           query index of each instance; -1 = padding
=================  =======  ===============  ==================================================

with ``Q, L, M`` from ``feature_lengths`` (the trainer's ``TASK_FEATURE_LENGTHS``):
``{'queries': Q, 'query_length': L, 'instances': M}``.

Per image (OWL-ViT's recipe, papers.md §2.4):

* **queries**: the class names of its boxes (positives) plus up to ``num_negatives`` random
  other class names of the split (negatives: the detector learns to give them no box), in a
  random order; each box is labelled with the index of its class's query. An example's own
  ``queries`` (OWL-ST: caption n-grams without a box) are never its negatives;
* **mosaics** (training): with probability ``mosaic_probabilities[i]`` an image is a
  ``k x k`` grid (``k = mosaic_sizes[i]``) of examples, each shrunk to ``image_size // k``, with
  their boxes; more, smaller objects per image for the same compute;
* **flips** (training, tasks with ``flip``): left-right with probability 1/2, boxes mirrored.

More boxes than ``M`` or more classes than ``Q`` in one image is an error that names the
example (never a silent cut). Determinism: step ``j`` of shard ``s`` holds global positions
``(j * num_shards + s) * B + i``; everything about a position follows from ``(seed, task,
split, position)``, so ``start_step=k`` resumes exactly. ``repeat=False`` visits every example
once, in order (no mosaics, no flips; negatives still drawn), and fills the last batch with
padding rows (no queries, no boxes).
"""

import concurrent.futures
import zlib
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from palix.query_tokens import QueryTokenizer
from palix.tasks import box_tasks
from palix.tasks.media_io import DataError

LENGTH_KEYS = ("queries", "query_length", "instances")


def _hash(text: str) -> int:
  return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> uint8 ``[size, size, 3]`` (bilinear, aspect not kept: boxes are
  normalised, so they follow)."""
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def mosaic(examples: Sequence[box_tasks.BoxExample], k: int, image_size: int
           ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
  """``k x k`` examples (row-major) in one ``image_size`` image: ``(uint8 image, yxyx boxes
  [N, 4], labels)``. Tiles are ``image_size // k`` pixels; a remainder stays black."""
  tile = image_size // k
  canvas = np.zeros((image_size, image_size, 3), np.uint8)
  boxes, labels = [], []
  for t, example in enumerate(examples):
    row, col = divmod(t, k)
    canvas[row * tile:(row + 1) * tile, col * tile:(col + 1) * tile] = resize(example.image, tile)
    offset = np.array([row, col, row, col], np.float32) * tile
    boxes.append((offset + example.boxes * tile) / image_size)
    labels.extend(example.labels)
  return canvas, np.concatenate(boxes).reshape(-1, 4).astype(np.float32), labels


def flip_left_right(image: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  flipped = boxes.copy()
  flipped[:, 1], flipped[:, 3] = 1.0 - boxes[:, 3], 1.0 - boxes[:, 1]
  return image[:, ::-1], flipped


def yxyx_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
  ymin, xmin, ymax, xmax = boxes.T
  return np.stack([(xmin + xmax) / 2, (ymin + ymax) / 2, xmax - xmin, ymax - ymin], -1)


def choose_queries(labels: Sequence[str], vocabulary: Sequence[str], num_negatives: int,
                   max_queries: int, rng: np.random.Generator, where: str,
                   not_negative: Sequence[str] = ()) -> Tuple[List[str], np.ndarray]:
  """``(queries, label index of each box)``: positives + random negatives (never one of
  ``not_negative``), shuffled."""
  positives = list(dict.fromkeys(labels))
  if len(positives) > max_queries:
    raise DataError(f"{where}: {len(positives)} different classes {positives} but "
                    f"TASK_FEATURE_LENGTHS['queries'] is {max_queries}; raise it")
  excluded = set(positives) | set(not_negative)
  others = [c for c in vocabulary if c not in excluded]
  count = min(num_negatives, max_queries - len(positives), len(others))
  negatives = [others[i] for i in rng.choice(len(others), count, replace=False)] if count else []
  queries = [(positives + negatives)[i] for i in rng.permutation(len(positives) + count)]
  index = {q: k for k, q in enumerate(queries)}
  return queries, np.array([index[label] for label in labels], np.int32)


class _Stream:
  """Everything about one global position of one task's stream."""

  def __init__(self, task: box_tasks.BoxTask, split: str, *, lengths: Mapping[str, int],
               image_size: int, seed: int, shuffle: bool, repeat: bool,
               mosaic_sizes: Sequence[int], mosaic_probabilities: Sequence[float],
               num_negatives: int, flip: bool, tokenizer: QueryTokenizer):
    self.task, self.split = task, split
    self.size = task.source.num_examples(split)
    if self.size < 1:
      raise DataError(f"detection task {task.name!r} split {split!r} has no examples")
    self.vocabulary = task.source.class_names(split)
    self.max_queries, self.max_instances = lengths["queries"], lengths["instances"]
    self.image_size, self.seed, self.shuffle, self.repeat = image_size, seed, shuffle, repeat
    self.sizes = tuple(mosaic_sizes)
    self.probabilities = np.asarray(mosaic_probabilities, np.float64)
    self.max_tiles = max(self.sizes) ** 2
    self.num_negatives, self.flip, self.tokenizer = num_negatives, flip, tokenizer
    self._stream_hash = _hash(f"{task.name}:{split}")
    self._permutations: Dict[int, np.ndarray] = {}

  def index(self, q: int) -> int:
    """Example index at stream position ``q`` (a fresh permutation per epoch when shuffling)."""
    epoch, offset = divmod(q, self.size)
    if not self.shuffle:
      return offset
    if epoch not in self._permutations:
      self._permutations = {epoch: np.random.default_rng(
          [self.seed, self._stream_hash, epoch]).permutation(self.size)}
    return int(self._permutations[epoch][offset])

  def padding(self, lengths: Mapping[str, int]) -> Dict[str, np.ndarray]:
    s, q, length, m = self.image_size, lengths["queries"], lengths["query_length"], \
        lengths["instances"]
    return {"images": np.zeros((s, s, 3), np.float32),
            "query_tokens": np.zeros((q, length), np.int32),
            "boxes": np.zeros((m, 4), np.float32), "box_labels": np.full((m,), -1, np.int32)}

  def row(self, position: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self._stream_hash, position])
    if self.repeat:
      k = self.sizes[int(rng.choice(len(self.sizes), p=self.probabilities))]
      examples = [self.task.source.example(self.split, self.index(position * self.max_tiles + t))
                  for t in range(k * k)]
    else:
      k, examples = 1, [self.task.source.example(self.split, position)]
    for example in examples:
      if example.image.ndim != 3 or example.image.shape[-1] != 3:
        raise DataError(f"{example.record_id}: image has shape {example.image.shape}; expected "
                        "[height, width, 3]")
    image, boxes, labels = mosaic(examples, k, self.image_size)
    where = ", ".join(e.record_id for e in examples)
    if len(labels) > self.max_instances:
      raise DataError(f"{where}: {len(labels)} boxes in one image but "
                      f"TASK_FEATURE_LENGTHS['instances'] is {self.max_instances}; raise it")
    if self.repeat and self.flip and rng.random() < 0.5:
      image, boxes = flip_left_right(image, boxes)
    queries, label_index = choose_queries(labels, self.vocabulary, self.num_negatives,
                                          self.max_queries, rng, where,
                                          [q for e in examples for q in e.queries])
    out_boxes = np.zeros((self.max_instances, 4), np.float32)
    out_boxes[:len(labels)] = yxyx_to_cxcywh(boxes)
    out_labels = np.full((self.max_instances,), -1, np.int32)
    out_labels[:len(labels)] = label_index
    return {"images": image.astype(np.float32) / 127.5 - 1.0,
            "query_tokens": self.tokenizer.encode(queries, self.max_queries,
                                                  pad_to=self.max_queries, where=where),
            "boxes": out_boxes, "box_labels": out_labels}


def check_lengths(feature_lengths: Optional[Mapping[str, int]]) -> Dict[str, int]:
  lengths = dict(feature_lengths or {})
  missing = [k for k in LENGTH_KEYS if k not in lengths]
  if missing or any(int(lengths[k]) < 1 for k in LENGTH_KEYS if k in lengths):
    raise ValueError(f"detection batches need TASK_FEATURE_LENGTHS with positive "
                     f"{list(LENGTH_KEYS)}; got {lengths}")
  return {k: int(lengths[k]) for k in LENGTH_KEYS}


def get_box_batches(task_name: str, *, split: str, batch_size: int,
                    feature_lengths: Mapping[str, int], image_size: int = 128, seed: int = 0,
                    shuffle: bool = True, repeat: bool = True, start_step: int = 0,
                    shard_index: int = 0, num_shards: int = 1,
                    mosaic_sizes: Sequence[int] = (1,),
                    mosaic_probabilities: Optional[Sequence[float]] = None,
                    num_negatives: int = 8, vocabulary_path: Optional[str] = None,
                    sources: Optional[Mapping[str, box_tasks.BoxSource]] = None,
                    prefetch: bool = True) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of a detection task (see the module docstring).

  Args:
    task_name: a task of ``palix.tasks.box_tasks``, or a key of ``sources``.
    split, batch_size, seed, shuffle, repeat, start_step, shard_index, num_shards: as in
      ``palix.tasks.dataset.get_batches`` (``batch_size`` rows on this shard).
    feature_lengths: ``{'queries', 'query_length', 'instances'}``.
    image_size: side of the square images.
    mosaic_sizes, mosaic_probabilities: mosaic grid sides and their probabilities (default
      uniform); ``(1,)`` is no mosaics.
    num_negatives: random negative queries per image (at most ``queries`` minus the positives).
    vocabulary_path: SentencePiece model of the queries (default: palix's).
    sources: extra ``{name: BoxSource}`` (a gin-bound COCO file, say), looked up first.
    prefetch: build the next batch in a background thread.
  """
  lengths = check_lengths(feature_lengths)
  if batch_size < 1 or num_shards < 1 or not 0 <= shard_index < num_shards or start_step < 0:
    raise ValueError(f"need batch_size >= 1, num_shards >= 1, 0 <= shard_index < num_shards and "
                     f"start_step >= 0; got {batch_size}, {num_shards}, {shard_index}, "
                     f"{start_step}")
  sizes = tuple(int(k) for k in mosaic_sizes)
  probabilities = (np.full(len(sizes), 1.0 / len(sizes)) if mosaic_probabilities is None
                   else np.asarray(mosaic_probabilities, np.float64))
  if (not sizes or min(sizes) < 1 or len(probabilities) != len(sizes)
      or np.any(probabilities < 0) or not np.isclose(probabilities.sum(), 1.0)):
    raise ValueError(f"mosaic_sizes {sizes} need positive sides and mosaic_probabilities "
                     f"{list(probabilities)} one probability each, summing to 1")
  if sources and task_name in sources:
    task = box_tasks.BoxTask(task_name, sources[task_name])
  else:
    task = box_tasks.get_box_task(task_name)
  stream = _Stream(task, split, lengths=lengths, image_size=image_size, seed=seed,
                   shuffle=shuffle, repeat=repeat, mosaic_sizes=sizes,
                   mosaic_probabilities=probabilities / probabilities.sum(),
                   num_negatives=num_negatives, flip=task.flip,
                   tokenizer=QueryTokenizer(lengths["query_length"], vocabulary_path))
  padding = stream.padding(lengths)

  def batch(step: int) -> Optional[Dict[str, np.ndarray]]:
    first = (step * num_shards + shard_index) * batch_size
    if not repeat and step * num_shards * batch_size >= stream.size:
      return None
    rows = [stream.row(p) if repeat or p < stream.size else padding
            for p in range(first, first + batch_size)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  return _iterate(batch, start_step, prefetch)


def _iterate(batch, start_step: int, prefetch: bool) -> Iterator[Dict[str, np.ndarray]]:
  step = start_step
  if not prefetch:
    while True:
      out = batch(step)
      if out is None:
        return
      yield out
      step += 1
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="box_batches") as pool:
    pending = pool.submit(batch, step)
    while True:
      out = pending.result()
      if out is None:
        return
      step += 1
      pending = pool.submit(batch, step)
      yield out
