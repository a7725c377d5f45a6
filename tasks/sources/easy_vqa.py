"""easy-VQA (PyPI ``easy-vqa``, MIT): 64x64 images of one coloured shape, with questions.

The package ships 4000 train / 1000 test PNGs and 38,575 / 9,673 ``(question, answer, image id)``
triples (13 answers: 3 shapes, 8 colours, yes/no). Two sources read it:

* ``kind='vqa'``: one example per question: ``answer en {question}`` -> answer;
* ``kind='caption'``: one example per image: ``caption en`` -> ``a {colour} {shape}``.

The package has no per-image labels, so captions derive them from the questions of that image:
answers that are a shape or colour, shapes or colours named in ``what color is the {shape}?`` and
``what is the {colour} shape?``, and yes/no questions (``is there not a red shape?`` -> no ->
red). Where the questions leave a label open (about 7% of colours), it is read from the pixels:
the shape's colour is one of 8 exact RGB values, and its fill ratio in its bounding box tells the
shape (triangle < 0.7 < circle < 0.915 < rectangle). Both methods agree on every image where the
questions decide (tested).
"""

import collections
import functools
import re
from typing import Dict, Iterator, Tuple

import numpy as np
from PIL import Image

from palix.tasks import prompts
from palix.tasks.sources import base

SHAPES = ("circle", "rectangle", "triangle")
COLORS = {"black": (0, 0, 0), "blue": (0, 0, 255), "brown": (165, 42, 42),
          "gray": (128, 128, 128), "green": (0, 255, 0), "red": (255, 0, 0),
          "teal": (0, 128, 128), "yellow": (255, 255, 0)}
SPLITS = ("train", "test")
_SHAPE_DIFF = 60  # |pixel - background| summed over RGB above which a pixel belongs to the shape


@functools.lru_cache(maxsize=None)
def split_data(split: str):
  """``(questions, answers, image_ids, {image id: png path})`` of a split, from the package."""
  import easy_vqa  # pylint: disable=g-import-not-at-top
  if split == "train":
    return (*easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths())
  if split == "test":
    return (*easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())
  raise ValueError(f"easy-VQA has splits {SPLITS}; got {split!r}")


@functools.lru_cache(maxsize=None)
def image_ids(split: str) -> Tuple[int, ...]:
  """Sorted image ids of a split."""
  return tuple(sorted(split_data(split)[3]))


def labels_from_questions(questions, answers, question_image_ids) -> Dict[int, Dict[str, str]]:
  """Shape and colour of each image as far as its questions decide them."""
  present, absent = collections.defaultdict(set), collections.defaultdict(set)
  for question, answer, image_id in zip(questions, answers, question_image_ids):
    words = re.findall(r"[a-z]+", question)
    named = [w for w in words if w in SHAPES or w in COLORS]
    if answer in SHAPES or answer in COLORS:
      present[image_id].add(answer)
      present[image_id].update(w for w in named)  # "what color is the circle?" names the shape
    elif answer in ("yes", "no") and len(named) == 1:
      negated = "not" in words or "no" in words
      (present if (answer == "yes") != negated else absent)[image_id].add(named[0])
  labels = {}
  for image_id in set(question_image_ids):
    found = {}
    for kind, names in (("shape", SHAPES), ("color", tuple(COLORS))):
      yes = [n for n in names if n in present[image_id]]
      left = [n for n in names if n not in absent[image_id]]
      if len(yes) > 1 or (yes and yes[0] in absent[image_id]):
        raise base.DataError(f"easy-VQA image {image_id}: contradictory {kind} answers {yes}")
      if yes or len(left) == 1:
        found[kind] = (yes or left)[0]
    labels[image_id] = found
  return labels


def shape_alpha(image: np.ndarray) -> np.ndarray:
  """Coverage of the shape in [0, 1] per pixel (antialiased edges are fractional)."""
  image = image.astype(np.int64)
  background = image[0, 0]
  diff = np.abs(image - background).sum(-1)
  core = diff[diff > _SHAPE_DIFF]
  full = np.max(core) if core.size else 1
  return np.clip(diff / full, 0.0, 1.0) * (diff > _SHAPE_DIFF // 4)


def labels_from_pixels(image: np.ndarray) -> Tuple[str, str]:
  """``(shape, colour)`` read from the pixels of an easy-VQA image."""
  counts = {name: int(np.all(image == np.array(rgb), axis=-1).sum())
            for name, rgb in COLORS.items()}
  color = max(counts, key=counts.get)
  mask = np.abs(image.astype(np.int64) - image[0, 0]).sum(-1) > _SHAPE_DIFF
  ys, xs = np.nonzero(mask)
  fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
  shape = "triangle" if fill < 0.7 else "circle" if fill < 0.915 else "rectangle"
  return shape, color


def read_png(path: str) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


@functools.lru_cache(maxsize=None)
def image_labels(split: str) -> Dict[int, Dict[str, str]]:
  """``{image id: {'shape', 'color', 'from'}}``: question-derived, pixels where undecided."""
  questions, answers, question_image_ids, paths = split_data(split)
  labels = labels_from_questions(questions, answers, question_image_ids)
  result = {}
  for image_id in sorted(paths):
    found = dict(labels.get(image_id, {}))
    origin = "questions"
    if len(found) < 2:
      shape, color = labels_from_pixels(read_png(paths[image_id]))
      found.setdefault("shape", shape)
      found.setdefault("color", color)
      origin = "questions+pixels"
    result[image_id] = dict(found, **{"from": origin})
  return result


@functools.lru_cache(maxsize=None)
def sprite(split: str, image_id: int) -> Tuple[np.ndarray, np.ndarray, str, str]:
  """The shape cut out of its image: ``(rgb [h, w, 3] uint8, alpha [h, w], shape, colour)``.

  The crop is the bounding box of the shape's pixels; ``alpha`` keeps its antialiased edges.
  """
  image = read_png(split_data(split)[3][image_id])
  alpha = shape_alpha(image)
  ys, xs = np.nonzero(alpha >= 0.5)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  labels = image_labels(split)[image_id]
  return image[y0:y1, x0:x1], alpha[y0:y1, x0:x1], labels["shape"], labels["color"]


def caption(shape: str, color: str) -> str:
  return f"a {color} {shape}"


class EasyVqaSource(base.TableSource):
  """easy-VQA questions (``kind='vqa'``) or derived captions (``kind='caption'``)."""

  def __init__(self, kind: str = "vqa", **kwargs):
    if kind not in ("vqa", "caption"):
      raise ValueError(f"kind must be 'vqa' or 'caption'; got {kind!r}")
    kwargs.setdefault("verify_images", False)  # package data; every image decodes (tested)
    super().__init__(SPLITS, **kwargs)
    self.kind = kind

  def _iter_records(self, split: str) -> Iterator[base.RecordOrError]:
    questions, answers, question_image_ids, paths = split_data(split)
    if self.kind == "vqa":
      for k, (question, answer, image_id) in enumerate(zip(questions, answers,
                                                            question_image_ids)):
        yield base.Record(inputs=prompts.vqa_prompt(question), targets=answer,
                          record_id=f"easy_vqa/{split}/questions.json[{k}]",
                          image_paths=(paths[image_id],), extras={"answers": (answer,)})
    else:
      labels = image_labels(split)
      for image_id in sorted(paths):
        yield base.Record(inputs=prompts.caption_prompt(),
                          targets=caption(labels[image_id]["shape"], labels[image_id]["color"]),
                          record_id=f"easy_vqa/{split}/images/{image_id}.png",
                          image_paths=(paths[image_id],))
