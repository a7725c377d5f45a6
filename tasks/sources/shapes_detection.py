"""Detection on real pixels with exact boxes: easy-VQA shapes and Fashion-MNIST items on a canvas.

Example ``i`` of a split is a ``canvas x canvas`` pale image with 2-4 objects (each an easy-VQA
shape or a Fashion-MNIST item of the same split, chance ``fashion_fraction``) placed without
overlap. Boxes are the pasted crops (see ``sprites``), so they are exact. Prompt and target:

* ``detect {classes}``: the classes present, plus (half of the time) one absent class, sorted;
* target: ``detection_target`` of the objects ordered by class (prompt order), then top, left.

Everything about example ``i`` follows from ``(data_seed, split, i)``.
"""

from typing import List, Tuple

import numpy as np
import tensorflow as tf

from palix.tasks import prompts
from palix.tasks.sources import base
from palix.tasks.sources import easy_vqa
from palix.tasks.sources import fashion_mnist
from palix.tasks.sources import sprites

CLASSES = tuple(sorted(easy_vqa.SHAPES + fashion_mnist.CLASS_NAMES))
DEFAULT_SIZES = {"train": 4000, "test": 500}


class ShapesDetectionSource(base.PythonSource):
  """Multi-object detection canvases (see the module docstring)."""

  def __init__(self, num_examples=None, canvas: int = 128, min_objects: int = 2,
               max_objects: int = 4, fashion_fraction: float = 0.5, data_seed: int = 0):
    if not 1 <= min_objects <= max_objects:
      raise ValueError(f"need 1 <= min_objects <= max_objects; got {min_objects}, {max_objects}")
    super().__init__(tuple(num_examples or DEFAULT_SIZES), num_examples or DEFAULT_SIZES,
                     data_seed=data_seed, augment_splits=())
    self.canvas, self.min_objects, self.max_objects = canvas, min_objects, max_objects
    self.fashion_fraction = fashion_fraction

  @property
  def pixel_shape(self):
    return (1, self.canvas, self.canvas, 3)

  @property
  def extra_specs(self):
    """The exact boxes for metrics, in placement order (``objects``): pixel
    ``(top, left, bottom, right)`` and labels, padded to ``max_objects`` with -1 and ``""``."""
    return {"boxes/pixels": tf.TensorSpec([self.max_objects, 4], tf.int32),
            "boxes/labels": tf.TensorSpec([self.max_objects], tf.string)}

  def _random_sprite(self, split: str, rng: np.random.Generator) -> sprites.Sprite:
    if rng.random() < self.fashion_fraction:
      count = len(fashion_mnist.load(split)[1])
      return sprites.fashion_sprite(split, int(rng.integers(count)), rng,
                                    scale=float(rng.uniform(1.0, 1.6)))
    image_ids = easy_vqa.image_ids(split)
    return sprites.shape_sprite(split, image_ids[int(rng.integers(len(image_ids)))])

  def objects(self, split: str, index: int) -> Tuple[np.ndarray, List[Tuple[Tuple[int, ...], str]]]:
    """``(canvas uint8 [H, W, 3], [((top, left, bottom, right) pixels, label), ...])``."""
    canvas, placed = self.placed_sprites(split, index)
    return canvas, [(box, sprite.label) for box, sprite in placed]

  def placed_sprites(self, split: str, index: int
                     ) -> Tuple[np.ndarray, List[Tuple[Tuple[int, ...], sprites.Sprite]]]:
    """``objects`` with each object's whole ``Sprite`` (its colour, for captions)."""
    rng = self.rng(split, index)
    canvas = sprites.pale_background(rng, self.canvas, self.canvas)
    wanted = int(rng.integers(self.min_objects, self.max_objects + 1))
    placed = []
    for _ in range(4 * wanted):  # draw more sprites if one does not fit
      if len(placed) == wanted:
        break
      sprite = self._random_sprite(split, rng)
      corner = sprites.free_corner(rng, sprite.size, [box for box, _ in placed], self.canvas,
                                   self.canvas)
      if corner is None:
        continue
      top, left = corner
      sprites.paste(canvas, sprite, top, left)
      placed.append(((top, left, top + sprite.size[0], left + sprite.size[1]), sprite))
    if len(placed) < self.min_objects:
      raise RuntimeError(f"could not place {self.min_objects} objects on canvas {split}:{index}; "
                         "use a larger canvas")
    return canvas, placed

  def make_example(self, split: str, index: int) -> base.PythonExample:
    canvas, placed = self.objects(split, index)
    pixel_boxes = np.full((self.max_objects, 4), -1, np.int32)
    labels = np.full((self.max_objects,), b"", object)
    for k, (box, label) in enumerate(placed):
      pixel_boxes[k], labels[k] = box, label.encode()
    rng = np.random.default_rng([self.data_seed, base.stable_hash(split + "/prompt"), index])
    present = sorted({label for _, label in placed})
    absent = [c for c in CLASSES if c not in present]
    classes = sorted(present + ([absent[int(rng.integers(len(absent)))]] if rng.random() < 0.5
                                else []))
    order = {c: k for k, c in enumerate(classes)}
    placed = sorted(placed, key=lambda item: (order[item[1]], item[0][0], item[0][1]))
    size = float(self.canvas)
    boxes = [tuple(c / size for c in box) for box, _ in placed]
    target = prompts.detection_target(boxes, [label for _, label in placed])
    return base.PythonExample(canvas[None], prompts.detection_prompt(classes), target,
                              extras={"boxes/pixels": pixel_boxes, "boxes/labels": labels})
