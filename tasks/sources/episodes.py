"""Few-shot episodes: k solved examples and a query, as one multi-image example.

A k-shot episode has the images ``[shot_1, ..., shot_k, query]`` and the encoder text of
:func:`palix.few_shot.episode_text`::

  {prompt_1} {answer_1} <sep> ... {prompt_k} {answer_k} <sep> {query_prompt}  ->  {query answer}

The PaLI-X model places each ``<sep>``-ended text segment right after its image. Two sources:

* :class:`EpisodeSource` wraps any single-image source. Episode ``i`` draws k+1 distinct base
  examples uniformly without replacement, with stateless random ops seeded by
  ``(data_seed, split, i)``: draw 0 is the query, draws 1..k are the shots.
  The query of episode ``i`` therefore does not depend on k (a 0-shot source gives the same
  queries), it is never one of its own shots, and episodes are random-access and resumable.
* :class:`RemappedShapeNamesSource`: easy-VQA shapes named by words the image cannot tell. Each
  episode draws a fresh mapping of the three shapes to three words of :data:`WORD_POOL`; the
  three shots show one image per shape with its word for this episode, the query another image.
  Only the context says which word is right: 3-shot accuracy far above 0-shot accuracy (1/3 at
  best, by guessing among seen words) measures in-context learning.
"""

import dataclasses
import functools
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from palix import few_shot
from palix.tasks.sources import base
from palix.tasks.sources import easy_vqa

_TEXT_KEYS = ("inputs", "targets", "record_id")
_MEDIA_KEYS = ("image/paths", "image/pixels", "video/path")


def _check_shots(shots, allowed: Optional[Sequence[int]] = None) -> int:
  if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 0:
    raise ValueError(f"shots must be an integer >= 0; got {shots!r}")
  if allowed is not None and shots not in allowed:
    raise ValueError(f"shots must be one of {tuple(allowed)}; got {shots!r}")
  return int(shots)


class EpisodeSource(base.ExampleSource):
  """k-shot episodes of any single-image source (see the module docstring).

  Args:
    base_source: a source with exactly one image per example (``image/pixels`` or
      ``image/paths``); videos and multi-image examples are refused.
    shots: k, solved examples before the query (0: the query alone).
    name: names the episodes in ``record_id`` and errors.
    num_examples: episodes per split (default: the base split's size).
    data_seed: seeds which base examples each episode draws.
  """

  def __init__(self, base_source: base.ExampleSource, shots: int, name: str = "",
               num_examples: Optional[Mapping[str, int]] = None, data_seed: int = 0):
    if not isinstance(base_source, base.ExampleSource):
      raise TypeError(f"EpisodeSource wraps a palix ExampleSource; got {type(base_source)}")
    self.shots = _check_shots(shots)
    self.base_source = base_source
    self.name = name or f"{type(base_source).__name__}_{self.shots}shot"
    self.data_seed = int(data_seed)
    self._sizes = dict(num_examples or {})
    self._checked = set()
    unknown = set(self._sizes) - set(base_source.splits)
    if unknown:
      raise ValueError(f"episodes {self.name!r}: num_examples names splits {sorted(unknown)} the "
                       f"base source does not have (it has {list(base_source.splits)})")
    # A base that is itself multi-image (e.g. a video PythonSource) fails here, before any data.
    if base_source.images_per_example not in (None, 1):
      raise ValueError(self._single_image_error(f"{base_source.images_per_example} images "
                                                "(frames) per example"))
    super().__init__(base_source.splits, base_source.augment_splits)

  @property
  def images_per_example(self) -> int:
    return self.shots + 1

  def _single_image_error(self, what: str) -> str:
    return (f"episodes {self.name!r}: the base source {type(self.base_source).__name__} has "
            f"{what}; an episode needs exactly one image per base example (no videos)")

  def _check_base(self, split: str) -> None:
    """Refuses videos and multi-image records of file-based bases (known once loaded)."""
    if split in self._checked:
      return
    if isinstance(self.base_source, base.TableSource):
      for record in self.base_source.records(split):
        if record.video_path:
          raise ValueError(self._single_image_error(f"a video ({record.record_id}: "
                                                    f"{record.video_path})"))
        if len(record.image_paths) != 1:
          raise ValueError(self._single_image_error(
              f"{len(record.image_paths)} images in {record.record_id}"))
    num_base = self.base_source.num_input_examples(split)
    if num_base < self.shots + 1:
      raise ValueError(f"episodes {self.name!r} split {split!r}: {self.shots} shots and a query "
                       f"need {self.shots + 1} distinct base examples; the base has {num_base}")
    self._checked.add(split)

  def _num_examples(self, split: str) -> int:
    self._check_base(split)
    if split in self._sizes:
      return int(self._sizes[split])
    return self.base_source.num_input_examples(split)

  # --- which base examples an episode holds --------------------------------------------------
  def members(self, split: str, index) -> tf.Tensor:
    """Base indices of episode ``index``: int64 ``[k+1]``, shots first, the query last.

    Draw j is uniform over the base examples not drawn before (draw 0 is the query, so it does
    not depend on k). Each draw has its own stateless Philox stream; a full-range int64 taken
    modulo the count is uniform up to ``count / 2**64``. (``index_shuffle`` is not used: with
    per-episode seeds its first positions are far from uniform.)
    """
    num_base = self.base_source.num_input_examples(split)
    seed = base.example_seed(self.data_seed, f"episodes:{split}", index)
    drawn = []
    for j in range(self.shots + 1):
      bits = tf.random.stateless_uniform(
          [], seed=tf.random.experimental.stateless_fold_in(seed, j, alg="philox"), minval=None,
          maxval=None, dtype=tf.int64, alg="philox")
      pick = tf.math.floormod(bits, num_base - j)  # rank among the examples not drawn yet
      for earlier in (tf.unstack(tf.sort(tf.stack(drawn))) if drawn else []):
        pick += tf.cast(pick >= earlier, tf.int64)  # skip drawn ones, in ascending order
      drawn.append(pick)
    return tf.stack(drawn[1:] + drawn[:1])

  def member_table(self, split: str) -> np.ndarray:
    """``members`` of every episode of ``split``: int64 ``[num_examples, k+1]``."""
    self._check_base(split)
    episodes = tf.data.Dataset.range(self.num_input_examples(split))
    episodes = episodes.map(tf.autograph.experimental.do_not_convert(
        lambda i: self.members(split, i))).batch(4096)
    return np.concatenate([rows.numpy() for rows in episodes], axis=0)

  def text_pairs(self, split: str) -> Iterator[Tuple[str, str]]:
    base_pairs = list(self.base_source.text_pairs(split))
    for row in self.member_table(split):
      query_prompt, query_answer = base_pairs[row[-1]]
      yield few_shot.episode_text([base_pairs[m] for m in row[:-1]], query_prompt), query_answer

  # --- the episode as tensors ------------------------------------------------------------------
  def _make_record_fn(self, split: str) -> base.RecordFn:
    self._check_base(split)
    base_fn = self.base_source.record_fn(split)
    num = self.num_input_examples(split)
    context = f"episodes {self.name!r} split {split!r}"

    def record(index):
      index = tf.cast(index, tf.int64)
      in_range = tf.debugging.Assert(
          tf.logical_and(index >= 0, index < num),
          [f"{context}: episode index outside [0, {num}):", index])
      with tf.control_dependencies([in_range]):
        members = tf.identity(self.members(split, index))
      examples = [base_fn(m) for m in tf.unstack(members, num=self.shots + 1)]
      shots, query = examples[:-1], examples[-1]
      features = {key: value for key, value in query.items()
                  if key not in _TEXT_KEYS and key not in _MEDIA_KEYS}  # e.g. VQA's answers
      features["record_id"] = tf.strings.join(
          [f"{self.name}:{split}[", tf.strings.as_string(index), "] shots: ",
           tf.strings.reduce_join([ex["record_id"] for ex in shots] or [""], separator=", "),
           "; query: ", query["record_id"]])
      texts = [t for ex in shots for t in (ex["inputs"], ex["targets"])] + [query["inputs"]]
      checks = [_text_check(texts, features["record_id"], context)]
      with tf.control_dependencies(checks):
        parts = [tf.strings.join([ex["inputs"], ex["targets"]], separator=" ") for ex in shots]
        features["inputs"] = tf.strings.join(parts + [query["inputs"]],
                                             separator=few_shot.JOINER)
        features["targets"] = tf.identity(query["targets"])
      features.update(_concat_media(examples, context, features["record_id"]))
      return features

    return record

  def raw_example(self, split: str, index: int) -> Dict[str, object]:
    """Episode ``index`` as plain Python, e.g. for evaluation.

    Keys: ``record_id``, ``inputs``, ``targets``, ``members`` (base indices, query last), the
    query's extra fields (tuples of strings, e.g. ``answers``), and ``image_paths`` (tuple) or
    ``pixels`` (uint8 ``[k+1, h, w, 3]``) in episode order.
    """
    renamed = {"image/paths": "image_paths", "image/pixels": "pixels"}
    example: Dict[str, object] = {}
    for key, value in self.record_fn(split)(tf.constant(index, tf.int64)).items():
      if value.dtype == tf.string:
        value = value.numpy()
        value = value.decode() if isinstance(value, bytes) else tuple(v.decode() for v in value)
      else:
        value = value.numpy()
      example[renamed.get(key, key)] = value
    example["members"] = tuple(int(m) for m in self.members(split, index).numpy())
    return example


def _text_check(texts: List[tf.Tensor], record_id: tf.Tensor, context: str) -> tf.Operation:
  """Every part is non-empty and free of ``<sep>`` (as :func:`few_shot.episode_text` demands)."""
  parts = tf.stack(texts)
  clean = tf.logical_and(
      tf.reduce_all(tf.strings.length(tf.strings.strip(parts)) > 0),
      tf.logical_not(tf.reduce_any(tf.strings.regex_full_match(
          parts, f"(?s).*{few_shot.SEPARATOR}.*"))))
  return tf.debugging.Assert(
      clean, [f"{context}: an episode's prompts and answers must be non-empty and must not "
              f"contain {few_shot.SEPARATOR};", record_id, parts], summarize=64)


def _concat_media(examples: List[Dict[str, tf.Tensor]], context: str,
                  record_id: tf.Tensor) -> Dict[str, tf.Tensor]:
  """The members' images, in episode order, as one ``image/pixels`` or ``image/paths``."""
  kinds = {tuple(k for k in _MEDIA_KEYS if k in ex) for ex in examples}
  if len(kinds) != 1 or len(next(iter(kinds))) != 1 or next(iter(kinds))[0] == "video/path":
    raise ValueError(f"{context}: base examples must each have one image (image/pixels or "
                     f"image/paths); got media keys {sorted(kinds)}")
  key = next(iter(kinds))[0]
  images = [ex[key] for ex in examples]
  counts = tf.stack([tf.shape(im, out_type=tf.int64)[0] for im in images])
  single = tf.debugging.Assert(
      tf.reduce_all(tf.equal(counts, 1)),
      [f"{context}: every base example needs exactly one image ({key}); counts:", counts,
       record_id])
  with tf.control_dependencies([single]):
    return {key: tf.concat(images, axis=0)}


# --- in-context shape naming -------------------------------------------------------------------

# Label words: single pieces of the committed vocabulary (tested), none of them a shape or colour
# word, so an image never tells its label.
WORD_POOL = ("bag", "boot", "coat", "dress", "sandal", "shirt", "sneaker", "trouser")
PROMPT = "shape en"
IMAGE_SIZE = 64
DEFAULT_SIZES = {"train": 20000, "test": 500}


@dataclasses.dataclass(frozen=True)
class ShapeEpisode:
  """One episode: the shape -> word mapping, the context images and the query image.

  ``context`` and ``query`` hold ``(easy-VQA image id, shape)``; ``context`` has one image per
  shape, in the order shown.
  """
  mapping: Mapping[str, str]
  context: Tuple[Tuple[int, str], ...]
  query: Tuple[int, str]

  @property
  def target(self) -> str:
    return self.mapping[self.query[1]]


class RemappedShapeNamesSource(base.PythonSource):
  """easy-VQA shapes named by a per-episode random word mapping (see the module docstring).

  ``shots=3``: images ``[context x3, query]``, inputs ``shape en {w} <sep> ... <sep> shape en``;
  ``shots=0``: the same query image and target (same episode index), inputs ``shape en``.
  """

  def __init__(self, shots: int = 3, num_examples: Optional[Mapping[str, int]] = None,
               data_seed: int = 0):
    self.shots = _check_shots(shots, allowed=(0, len(easy_vqa.SHAPES)))
    super().__init__(easy_vqa.SPLITS, num_examples or DEFAULT_SIZES, data_seed=data_seed,
                     augment_splits=())

  @property
  def pixel_shape(self):
    return (self.shots + 1, IMAGE_SIZE, IMAGE_SIZE, 3)

  def episode(self, split: str, index: int) -> ShapeEpisode:
    """Episode ``index`` of ``split``; draws the same numbers whatever ``shots`` is."""
    by_shape = _image_ids_by_shape(split)
    rng = self.rng(split, index)
    words = rng.choice(len(WORD_POOL), size=len(easy_vqa.SHAPES), replace=False)
    mapping = {shape: WORD_POOL[w] for shape, w in zip(easy_vqa.SHAPES, words)}
    context = []
    for shape_index in rng.permutation(len(easy_vqa.SHAPES)):
      shape = easy_vqa.SHAPES[shape_index]
      context.append((by_shape[shape][int(rng.integers(len(by_shape[shape])))], shape))
    query_shape = easy_vqa.SHAPES[int(rng.integers(len(easy_vqa.SHAPES)))]
    shown = dict((s, i) for i, s in context)[query_shape]
    candidates = [i for i in by_shape[query_shape] if i != shown]
    query = (candidates[int(rng.integers(len(candidates)))], query_shape)
    return ShapeEpisode(mapping, tuple(context), query)

  def _texts(self, episode: ShapeEpisode) -> Tuple[str, str]:
    shown = episode.context if self.shots else ()
    return (few_shot.episode_text([(PROMPT, episode.mapping[s]) for _, s in shown], PROMPT),
            episode.target)

  def make_example(self, split: str, index: int) -> base.PythonExample:
    episode = self.episode(split, index)
    shown = episode.context if self.shots else ()
    paths = easy_vqa.split_data(split)[3]
    pixels = np.stack([easy_vqa.read_png(paths[image_id])
                       for image_id, _ in list(shown) + [episode.query]])
    if pixels.shape != self.pixel_shape:
      raise base.DataError(f"{type(self).__name__} {split}[{index}]: easy-VQA images gave pixels "
                           f"of shape {pixels.shape}; expected {self.pixel_shape}")
    return base.PythonExample(pixels, *self._texts(episode))

  def text_pairs(self, split: str) -> Iterator[Tuple[str, str]]:
    for index in range(self.num_input_examples(split)):  # no pixels needed
      yield self._texts(self.episode(split, index))


@functools.lru_cache(maxsize=None)
def _image_ids_by_shape(split: str) -> Dict[str, Tuple[int, ...]]:
  labels = easy_vqa.image_labels(split)
  by_shape = {shape: tuple(i for i in sorted(labels) if labels[i]["shape"] == shape)
              for shape in easy_vqa.SHAPES}
  for shape, ids in by_shape.items():
    if len(ids) < 2:
      raise base.DataError(f"easy-VQA split {split!r} has {len(ids)} {shape} images; shape-name "
                           "episodes need at least 2 per shape")
  return by_shape
