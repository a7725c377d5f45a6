"""Captioned canvases: the shapes-detection canvases with a caption that names every object.

The stand-in for web image-text pairs of OWL-ST (docs/owl.md): the image-text model learns from
these captions, and the OWL-ST pipeline pseudo-labels them (boxes found by a detector for n-grams
of the caption). Example ``i`` is canvas ``i`` of a ``ShapesDetectionSource`` with its own
``data_seed`` (1 by default, so these are not the detection canvases, seed 0) and the caption
lists its objects in a random order, each shape with its colour half of the time (a word that
alone tells the objects apart would spare the model from learning the shape words)::

  caption en  ->  a red triangle, a trouser and a bag
  caption en  ->  a circle and an ankle boot

The boxes exist (``objects``), so pseudo-labels can be checked against them, but nothing in
OWL-ST reads them.
"""

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from palix.tasks import prompts
from palix.tasks.sources import base
from palix.tasks.sources import shapes_detection
from palix.tasks.sources import sprites

DEFAULT_SIZES = {"train": 8000, "test": 500}
DATA_SEED = 1


def object_phrase(sprite: sprites.Sprite, with_colour: bool = True) -> str:
  """``a red triangle`` (a shape, with its colour if ``with_colour``) or ``an ankle boot``."""
  if sprite.color and with_colour:
    return prompts.with_article(f"{sprite.color} {sprite.label}")
  return prompts.with_article(sprite.label)


def join_phrases(phrases: Sequence[str]) -> str:
  """``a``, ``a and b``, ``a, b and c``."""
  if len(phrases) < 2:
    return "".join(phrases)
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


class ShapesCaptionSource(base.PythonSource):
  """Canvases with 1-4 objects and a caption naming them (see the module docstring)."""

  def __init__(self, num_examples: Optional[Mapping[str, int]] = None,
               data_seed: int = DATA_SEED, min_objects: int = 1, max_objects: int = 4,
               colour_probability: float = 0.5):
    sizes = dict(num_examples or DEFAULT_SIZES)
    super().__init__(tuple(sizes), sizes, data_seed=data_seed)
    self.colour_probability = colour_probability
    self.canvases = shapes_detection.ShapesDetectionSource(
        sizes, min_objects=min_objects, max_objects=max_objects, data_seed=data_seed)

  @property
  def pixel_shape(self):
    return self.canvases.pixel_shape

  def captioned(self, split: str, index: int
                ) -> Tuple[np.ndarray, str, List[Tuple[Tuple[int, ...], str]]]:
    """``(canvas, caption, [((top, left, bottom, right) pixels, label), ...])``."""
    canvas, placed = self.canvases.placed_sprites(split, index)
    order = np.random.default_rng([self.data_seed, base.stable_hash(split + "/caption"), index])
    phrases = [object_phrase(sprite, order.random() < self.colour_probability)
               for _, sprite in placed]
    caption = join_phrases([phrases[k] for k in order.permutation(len(phrases))])
    return canvas, caption, [(box, sprite.label) for box, sprite in placed]

  def make_example(self, split: str, index: int) -> base.PythonExample:
    canvas, caption, _ = self.captioned(split, index)
    return base.PythonExample(canvas[None], prompts.caption_prompt(), caption)
