"""Labelled images for classification: random access to ``(pixels, class id)``.

A :class:`ClassSource` knows, per split, how many examples it has, the class names, and how to
build example ``i`` as ``(uint8 [h, w, 3], label)``. Example ``i`` is a pure function of
``(split, i, data_seed)``, as for the text sources (``palix.tasks.sources.base``), so the batch
streams of ``palix.tasks.class_batches`` are exactly resumable.

* :class:`FashionMnistClassSource`: the 28x28 Fashion-MNIST images, 10 classes.
* :class:`EasyVqaClassSource`: the 64x64 easy-VQA images, by ``shape`` (3 classes) or ``color``
  (8 classes); labels come from ``easy_vqa.image_labels``.
* :class:`CanvasClassSource`: a mixed-size, mixed-aspect variant of either. Example ``i`` is item
  ``i`` of the base source cut out as a sprite (``palix.tasks.sources.sprites``), scaled by a
  random factor to fit a pale canvas of random height and width in ``[min_side, max_side]`` and
  pasted at a random place. The canvas is the image, so its size is the example's native
  resolution (:meth:`ClassSource.image_size` returns it without drawing the pixels).
"""

import abc
from typing import Tuple

import numpy as np
from PIL import Image

from palix.tasks.sources import base
from palix.tasks.sources import easy_vqa
from palix.tasks.sources import fashion_mnist
from palix.tasks.sources import sprites

DataError = base.DataError


class ClassSource(abc.ABC):
  """Random-access labelled images (see the module docstring)."""

  splits: Tuple[str, ...] = ("train", "test")

  @property
  @abc.abstractmethod
  def class_names(self) -> Tuple[str, ...]:
    """Class names; a label is an index into them."""

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Number of examples of ``split``."""

  @abc.abstractmethod
  def example(self, split: str, index: int) -> Tuple[np.ndarray, int]:
    """``(uint8 [h, w, 3], label)`` of example ``index`` of ``split``."""

  def image_size(self, split: str, index: int) -> Tuple[int, int]:
    """``(h, w)`` of example ``index`` (sources of one fixed size override this cheaply)."""
    return tuple(self.example(split, index)[0].shape[:2])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(f"{type(self).__name__} has no split {split!r}; it has {list(self.splits)}")

  def check_index(self, split: str, index: int) -> None:
    self.check_split(split)
    if not 0 <= index < self.num_examples(split):
      raise IndexError(f"{type(self).__name__} split {split!r}: index {index} outside "
                       f"[0, {self.num_examples(split)})")


class SpriteSource(ClassSource):
  """A class source whose items can also be cut out as sprites (for :class:`CanvasClassSource`)."""

  @abc.abstractmethod
  def sprite(self, split: str, index: int, rng: np.random.Generator) -> Tuple[sprites.Sprite, int]:
    """Item ``index`` cut out of its background, and its label."""


class FashionMnistClassSource(SpriteSource):
  """Fashion-MNIST (Debian ``dataset-fashion-mnist``): greyscale 28x28 as RGB, 10 classes."""

  def __init__(self, directory: str = None):
    self.directory = directory

  @property
  def class_names(self):
    return fashion_mnist.CLASS_NAMES

  def num_examples(self, split: str) -> int:
    self.check_split(split)
    return len(fashion_mnist.load(split, self.directory)[1])

  def example(self, split, index):
    self.check_index(split, index)
    images, labels = fashion_mnist.load(split, self.directory)
    return np.repeat(images[index][:, :, None], 3, axis=-1), int(labels[index])

  def image_size(self, split, index):
    return (28, 28)

  def sprite(self, split, index, rng):
    self.check_index(split, index)
    labels = fashion_mnist.load(split, self.directory)[1]
    return sprites.fashion_sprite(split, index, rng), int(labels[index])


class EasyVqaClassSource(SpriteSource):
  """easy-VQA images (PyPI ``easy-vqa``) labelled by ``attribute``: ``shape`` or ``color``."""

  def __init__(self, attribute: str = "shape"):
    names = {"shape": easy_vqa.SHAPES, "color": tuple(easy_vqa.COLORS)}
    if attribute not in names:
      raise ValueError(f"EasyVqaClassSource attribute must be one of {sorted(names)}; got "
                       f"{attribute!r}")
    self.attribute = attribute
    self._names = names[attribute]

  @property
  def class_names(self):
    return self._names

  def num_examples(self, split: str) -> int:
    self.check_split(split)
    return len(easy_vqa.image_ids(split))

  def _label(self, split: str, image_id: int) -> int:
    return self._names.index(easy_vqa.image_labels(split)[image_id][self.attribute])

  def example(self, split, index):
    self.check_index(split, index)
    image_id = easy_vqa.image_ids(split)[index]
    pixels = easy_vqa.read_png(easy_vqa.split_data(split)[3][image_id])
    return pixels, self._label(split, image_id)

  def image_size(self, split, index):
    return (64, 64)

  def sprite(self, split, index, rng):
    self.check_index(split, index)
    image_id = easy_vqa.image_ids(split)[index]
    return sprites.shape_sprite(split, image_id), self._label(split, image_id)


class CanvasClassSource(ClassSource):
  """``base``'s items on pale canvases of random size (see the module docstring).

  Args:
    base: the source of the items and labels (same splits, counts and classes).
    min_side, max_side: canvas height and width are drawn independently and uniformly from
      ``[min_side, max_side]`` pixels.
    min_fill: the item is scaled to ``u * (largest scale that fits)``, ``u ~ U[min_fill, 1]``.
    data_seed: seeds canvas sizes, backgrounds, scales and positions.
  """

  def __init__(self, base_source: SpriteSource, min_side: int = 16, max_side: int = 96,
               min_fill: float = 0.6, data_seed: int = 0):
    if not 4 <= min_side <= max_side:
      raise ValueError(f"CanvasClassSource needs 4 <= min_side <= max_side; got {min_side}, "
                       f"{max_side}")
    if not 0 < min_fill <= 1:
      raise ValueError(f"CanvasClassSource.min_fill must be in (0, 1]; got {min_fill}")
    self.base = base_source
    self.min_side, self.max_side, self.min_fill = min_side, max_side, min_fill
    self.data_seed = data_seed

  @property
  def class_names(self):
    return self.base.class_names

  def num_examples(self, split):
    return self.base.num_examples(split)

  def _rng(self, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([self.data_seed, base.stable_hash("canvas/" + split), index])

  def image_size(self, split, index):
    """The canvas ``(h, w)``: the first two draws of the example's generator."""
    rng = self._rng(split, index)
    return (int(rng.integers(self.min_side, self.max_side + 1)),
            int(rng.integers(self.min_side, self.max_side + 1)))

  def example(self, split, index):
    self.check_index(split, index)
    rng = self._rng(split, index)
    height = int(rng.integers(self.min_side, self.max_side + 1))
    width = int(rng.integers(self.min_side, self.max_side + 1))
    canvas = sprites.pale_background(rng, height, width)
    item, label = self.base.sprite(split, index, rng)
    h, w = item.size
    scale = rng.uniform(self.min_fill, 1.0) * min(height / h, width / w)
    size = (max(1, min(height, int(round(h * scale)))), max(1, min(width, int(round(w * scale)))))
    item = sprites.Sprite(_resize(item.rgb, size), _resize(item.alpha, size), item.label)
    top = int(rng.integers(0, height - size[0] + 1))
    left = int(rng.integers(0, width - size[1] + 1))
    sprites.paste(canvas, item, top, left)
    return canvas, label


def _resize(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Bilinear resize of uint8 ``[h, w, 3]`` or float ``[h, w]`` to ``size = (h, w)``."""
  if array.dtype == np.uint8:
    return np.asarray(Image.fromarray(array).resize(size[::-1], Image.BILINEAR))
  image = Image.fromarray(array.astype(np.float32), mode="F")
  return np.clip(np.asarray(image.resize(size[::-1], Image.BILINEAR)), 0.0, 1.0)

