"""Detection tasks with boxes as targets (for the OWL detector): a name -> a box source.

A ``BoxSource`` gives, per split and index, an image with its boxes and their class names
(``BoxExample``) and the class names of the split (the vocabulary random negative queries are
drawn from). ``palix.tasks.box_batches`` turns them into detection batches. Built-ins:

===========================  =====================================================================
name                         examples
===========================  =====================================================================
``shapes_detection``         the ``shapes_detection`` canvases (128 px, 2-4 objects), all 13 classes
``shapes_detection_seen``    the same canvases; only ``SEEN_CLASSES`` are boxed (the unseen
                             objects stay in the picture, unlabelled, as in LVIS "base" training)
``shapes_captions``          the captioned canvases (``sources.shapes_captions``) with every box
===========================  =====================================================================

The open-vocabulary split: ``UNSEEN_CLASSES`` are never boxed in base training; the OWL-ST
pipeline learns them from captions only (docs/owl.md). ``shapes_detection`` reports its mAP over
all classes and over each group (``OPEN_VOCABULARY_GROUPS``: seen, unseen). Your own data: ``add_box_task('mine',
CocoBoxSource({'train': 'train.json'}))`` or, from gin, ``box_data.box_batches.sources``.
"""

import abc
import dataclasses
import functools
import threading
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from palix.tasks import media_io
from palix.tasks.sources import coco_boxes
from palix.tasks.sources import shapes_captions
from palix.tasks.sources import shapes_detection

ALL_CLASSES = shapes_detection.CLASSES
# Never boxed in base training: one easy-VQA shape and three clothing items, one of them a
# two-word name (n-gram queries must find it whole).
UNSEEN_CLASSES = ("ankle boot", "bag", "triangle", "trouser")
SEEN_CLASSES = tuple(c for c in ALL_CLASSES if c not in UNSEEN_CLASSES)


@dataclasses.dataclass(frozen=True)
class BoxExample:
  """An image (uint8 ``[H, W, 3]``), its boxes (float32 ``[N, 4]`` normalised ymin, xmin, ymax,
  xmax) and their class names; ``record_id`` names it in errors; ``caption`` where known.

  ``queries``: texts that describe the image without a box (an OWL-ST image's caption n-grams
  that found none): they may be present, so they are never drawn as its negatives.
  """
  image: np.ndarray
  boxes: np.ndarray
  labels: Tuple[str, ...]
  record_id: str
  caption: str = ""
  queries: Tuple[str, ...] = ()


class BoxSource(abc.ABC):
  """Random access to the images and boxes of each split."""

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Examples in ``split``."""

  @abc.abstractmethod
  def example(self, split: str, index: int) -> BoxExample:
    """Example ``index`` of ``split``."""

  @abc.abstractmethod
  def class_names(self, split: str) -> Tuple[str, ...]:
    """Every class name of ``split`` (random negative queries are drawn from them)."""


def _pixel_boxes(placed, height: int, width: int, classes) -> Tuple[np.ndarray, Tuple[str, ...]]:
  kept = [(box, label) for box, label in placed if classes is None or label in classes]
  boxes = np.array([(t / height, l / width, b / height, r / width) for (t, l, b, r), _ in kept],
                   np.float32).reshape(-1, 4)
  return boxes, tuple(label for _, label in kept)


# Generated canvases kept in memory (49 KB each): training reads every canvas dozens of times.
CACHED_CANVASES = 8192


class ShapesBoxSource(BoxSource):
  """The shapes-detection canvases; only ``classes`` (default: all) are boxed."""

  def __init__(self, canvases: Optional[shapes_detection.ShapesDetectionSource] = None,
               classes: Optional[Sequence[str]] = None):
    self.canvases = canvases or shapes_detection.ShapesDetectionSource()
    self.classes = tuple(classes) if classes is not None else None
    unknown = sorted(set(self.classes or ()) - set(ALL_CLASSES))
    if unknown:
      raise ValueError(f"ShapesBoxSource: unknown classes {unknown}; the canvases have "
                       f"{list(ALL_CLASSES)}")
    self._objects = functools.lru_cache(CACHED_CANVASES)(self.canvases.objects)

  def num_examples(self, split: str) -> int:
    return self.canvases.num_input_examples(split)

  def example(self, split: str, index: int) -> BoxExample:
    canvas, placed = self._objects(split, index)
    boxes, labels = _pixel_boxes(placed, canvas.shape[0], canvas.shape[1], self.classes)
    return BoxExample(canvas, boxes, labels, f"shapes_detection:{split}[{index}]")

  def class_names(self, split: str) -> Tuple[str, ...]:
    return self.classes if self.classes is not None else ALL_CLASSES


class CaptionedBoxSource(BoxSource):
  """The captioned canvases (``sources.shapes_captions``) with their caption and every box."""

  def __init__(self, captions: Optional[shapes_captions.ShapesCaptionSource] = None):
    self.captions = captions or shapes_captions.ShapesCaptionSource()
    self._captioned = functools.lru_cache(CACHED_CANVASES)(self.captions.captioned)

  def num_examples(self, split: str) -> int:
    return self.captions.num_input_examples(split)

  def example(self, split: str, index: int) -> BoxExample:
    canvas, caption, placed = self._captioned(split, index)
    boxes, labels = _pixel_boxes(placed, canvas.shape[0], canvas.shape[1], None)
    return BoxExample(canvas, boxes, labels, f"shapes_captions:{split}[{index}]", caption)

  def class_names(self, split: str) -> Tuple[str, ...]:
    return ALL_CLASSES


class CocoBoxSource(BoxSource):
  """COCO-format files (``sources.coco_boxes``), e.g. OWL-ST pseudo-annotations.

  Args:
    files: ``{split: annotations JSON}``; image files are read from each JSON's folder, or from
      ``image_dirs[split]``.
    border_tolerance: pixels a box may reach past the image (clipped).
  """

  def __init__(self, files: Mapping[str, str], image_dirs: Optional[Mapping[str, str]] = None,
               border_tolerance: float = 1.0):
    if not files:
      raise ValueError("CocoBoxSource needs at least one {split: annotations.json} file")
    self.files = dict(files)
    self.image_dirs = dict(image_dirs or {})
    self.border_tolerance = border_tolerance
    self._loaded: Dict[str, Tuple[List[coco_boxes.CocoImage], Tuple[str, ...]]] = {}
    self._lock = threading.Lock()

  def _split(self, split: str):
    if split not in self.files:
      raise ValueError(f"CocoBoxSource has no split {split!r}; it has {sorted(self.files)}")
    with self._lock:
      if split not in self._loaded:
        images, categories = coco_boxes.read_coco_boxes(
            self.files[split], self.image_dirs.get(split), self.border_tolerance)
        if not images:
          raise media_io.DataError(f"{self.files[split]}: no images")
        self._loaded[split] = (images, tuple(sorted(set(categories.values()))))
      return self._loaded[split]

  def num_examples(self, split: str) -> int:
    return len(self._split(split)[0])

  def example(self, split: str, index: int) -> BoxExample:
    image = self._split(split)[0][index]
    pixels = media_io.read_image(image.path)
    if pixels.shape[:2] != (image.height, image.width):
      raise media_io.DataError(f"{self.files[split]}: image {image.image_id} ({image.path}) is "
                               f"{pixels.shape[1]}x{pixels.shape[0]} pixels, but the file says "
                               f"{image.width}x{image.height}")
    return BoxExample(pixels, image.boxes, image.labels,
                      f"{self.files[split]}: image {image.image_id}", image.caption,
                      image.queries)

  def class_names(self, split: str) -> Tuple[str, ...]:
    return self._split(split)[1]


@dataclasses.dataclass(frozen=True)
class BoxTask:
  """A detection task: its source, whether training flips images left-right, and the groups of
  classes its evaluation reports separately (``palix.eval.detection_eval``)."""
  name: str
  source: BoxSource
  flip: bool = True
  description: str = ""
  class_groups: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)


OPEN_VOCABULARY_GROUPS = {"seen": SEEN_CLASSES, "unseen": UNSEEN_CLASSES}


_BUILTINS: Dict[str, Callable[[], BoxTask]] = {
    "shapes_detection": lambda: BoxTask(
        "shapes_detection", ShapesBoxSource(),
        description="shapes_detection canvases, 13 classes boxed",
        class_groups=OPEN_VOCABULARY_GROUPS),
    "shapes_detection_seen": lambda: BoxTask(
        "shapes_detection_seen", ShapesBoxSource(classes=SEEN_CLASSES),
        description=f"shapes_detection canvases, only the {len(SEEN_CLASSES)} seen classes boxed",
        class_groups={"seen": SEEN_CLASSES}),
    "shapes_captions": lambda: BoxTask(
        "shapes_captions", CaptionedBoxSource(),
        description="captioned canvases (OWL-ST input), every object boxed"),
}
_ADDED: Dict[str, BoxTask] = {}
_LOCK = threading.Lock()


def add_box_task(name: str, source: BoxSource, *, flip: bool = True, description: str = "",
                 class_groups: Optional[Mapping[str, Sequence[str]]] = None,
                 replace: bool = False) -> BoxTask:
  """Registers a detection task (``replace`` re-registers an existing name)."""
  with _LOCK:
    if not replace and (name in _ADDED or name in _BUILTINS):
      raise ValueError(f"box task {name!r} is already registered (pass replace=True)")
    groups = {group: tuple(names) for group, names in (class_groups or {}).items()}
    _ADDED[name] = BoxTask(name, source, flip, description, groups)
    _built.cache_clear()
    return _ADDED[name]


@functools.lru_cache(maxsize=None)
def _built(name: str) -> BoxTask:
  return _ADDED[name] if name in _ADDED else _BUILTINS[name]()


def get_box_task(name: str) -> BoxTask:
  if name not in _ADDED and name not in _BUILTINS:
    raise ValueError(f"no detection task {name!r}; registered: {list_box_tasks()}")
  return _built(name)


def list_box_tasks() -> List[str]:
  return sorted(set(_BUILTINS) | set(_ADDED))
