"""Fashion-MNIST (Zalando, MIT) from the Debian package ``dataset-fashion-mnist``.

60,000 train / 10,000 test greyscale 28x28 images of 10 clothing classes, read from the IDX files
in ``/usr/share/datasets/fashion-mnist`` (or ``$PALIX_FASHION_MNIST_DIR``). Captions are
``a photo of a trouser`` (CapPa-style pretraining, zero-shot classification by scoring the ten
captions).
"""

import functools
import gzip
import os
from typing import Iterator, Tuple

import numpy as np

from palix.tasks import prompts
from palix.tasks.sources import base

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SPLITS = tuple(_FILES)


def data_dir() -> str:
  return os.environ.get("PALIX_FASHION_MNIST_DIR", DEFAULT_DIR)


def _read_idx(path: str, magic: int, rank: int) -> np.ndarray:
  if not os.path.isfile(path):
    raise base.DataError(f"{path}: Fashion-MNIST file not found; install the Debian package "
                         "(`apt-get install -y dataset-fashion-mnist`, done by `make install`) or "
                         "set PALIX_FASHION_MNIST_DIR")
  with gzip.open(path, "rb") as f:
    data = f.read()
  header = np.frombuffer(data[:4 * (1 + rank)], ">u4")
  if header[0] != magic:
    raise base.DataError(f"{path}: not an IDX file with magic {magic} (got {header[0]})")
  shape = tuple(int(d) for d in header[1:])
  values = np.frombuffer(data, np.uint8, offset=4 * (1 + rank))
  if values.size != int(np.prod(shape)):
    raise base.DataError(f"{path}: {values.size} values, header says {shape}")
  return values.reshape(shape)


@functools.lru_cache(maxsize=None)
def load(split: str, directory: str = None) -> Tuple[np.ndarray, np.ndarray]:
  """``(images uint8 [n, 28, 28], labels uint8 [n])`` of a split."""
  if split not in _FILES:
    raise ValueError(f"Fashion-MNIST has splits {SPLITS}; got {split!r}")
  directory = directory or data_dir()
  images_file, labels_file = (os.path.join(directory, f) for f in _FILES[split])
  images = _read_idx(images_file, 2051, 3)
  labels = _read_idx(labels_file, 2049, 1)
  if len(images) != len(labels):
    raise base.DataError(f"{directory}: {len(images)} images but {len(labels)} labels ({split})")
  return images, labels


def caption(label: int) -> str:
  return f"a photo of {prompts.with_article(CLASS_NAMES[label])}"


class FashionMnistCaptionSource(base.PythonSource):
  """``caption en`` -> ``a photo of a {class}`` for every Fashion-MNIST image."""

  def __init__(self, directory: str = None, **kwargs):
    self.directory = directory
    super().__init__(SPLITS, num_examples=None, **kwargs)

  @property
  def pixel_shape(self):
    return (1, 28, 28, 3)

  def _num_examples(self, split: str) -> int:
    return len(load(split, self.directory)[1])

  def make_example(self, split: str, index: int) -> base.PythonExample:
    images, labels = load(split, self.directory)
    pixels = np.repeat(images[index][None, :, :, None], 3, axis=-1)
    return base.PythonExample(pixels, prompts.caption_prompt(), caption(int(labels[index])))

  def text_pairs(self, split: str) -> Iterator[Tuple[str, str]]:
    for label in load(split, self.directory)[1]:
      yield prompts.caption_prompt(), caption(int(label))
