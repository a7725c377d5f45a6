"""Fixture images and clips of the data-layer tests (drawn, so their boxes are known)."""

import os

import numpy as np
import pytest

from palix.tasks.sources import fashion_mnist

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(fashion_mnist.data_dir(), "t10k-labels-idx1-ubyte.gz")),
    reason="Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist; "
    "`make install` does it)")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SQUARE_RED = (220, 20, 20)


def image_a() -> np.ndarray:
  """40 wide x 30 high: white, black bar x in [0, 5), red square x in [10, 30), y in [6, 18)."""
  image = np.full((30, 40, 3), 255, np.uint8)
  image[:, 0:5] = 0
  image[6:18, 10:30] = SQUARE_RED
  return image


def image_b() -> np.ndarray:
  """20 wide x 50 high: white with a blue bar x in [5, 15), y in [10, 50)."""
  image = np.full((50, 20, 3), 255, np.uint8)
  image[10:50, 5:15] = (20, 40, 220)
  return image


def moving_square_frames(count: int, size: int = 32, step: int = 3) -> np.ndarray:
  """A red 8x8 square moving right by ``step`` pixels per frame on white."""
  frames = np.full((count, size, size, 3), 255, np.uint8)
  for t in range(count):
    frames[t, 12:20, 1 + step * t:9 + step * t] = SQUARE_RED
  return frames
