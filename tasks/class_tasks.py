"""Image classification tasks: a name -> a labelled-image source and its training augmentation.

Read by ``palix.tasks.class_batches.get_class_batches`` (and so by ``palix train`` with the
classifier gin files). Built-ins:

===============================  ====================================================
name                             images
===============================  ====================================================
``fashion_mnist_class``          Fashion-MNIST, 28x28, 10 classes (60,000 / 10,000)
``easy_vqa_shape_class``         easy-VQA, 64x64, 3 shapes (4,000 / 1,000)
``easy_vqa_color_class``         easy-VQA, 64x64, 8 colours (4,000 / 1,000)
``fashion_mnist_canvas_class``   Fashion-MNIST items on canvases of 16-96 px per side
``easy_vqa_shape_canvas_class``  easy-VQA shapes on canvases of 16-96 px per side
===============================  ====================================================

The canvas tasks are the mixed-resolution, mixed-aspect data of NaViT experiments
(``palix.tasks.sources.class_sources.CanvasClassSource``, docs/navit.md). Your own:
``add_class_task('my_task', my_source)`` with any ``ClassSource``.
"""

import dataclasses
import functools
import threading
from typing import Callable, Dict, List

from palix.tasks.sources import class_sources


@dataclasses.dataclass(frozen=True)
class ClassTask:
  """A classification task: its source, and whether training flips images left-right."""
  name: str
  source: class_sources.ClassSource
  flip: bool = True
  description: str = ""


_BUILTINS: Dict[str, Callable[[], ClassTask]] = {
    "fashion_mnist_class": lambda: ClassTask(
        "fashion_mnist_class", class_sources.FashionMnistClassSource(),
        description="Fashion-MNIST, 28x28, 10 classes"),
    "easy_vqa_shape_class": lambda: ClassTask(
        "easy_vqa_shape_class", class_sources.EasyVqaClassSource("shape"),
        description="easy-VQA images by shape (circle, rectangle, triangle)"),
    "easy_vqa_color_class": lambda: ClassTask(
        "easy_vqa_color_class", class_sources.EasyVqaClassSource("color"),
        description="easy-VQA images by colour (8 classes)"),
    "fashion_mnist_canvas_class": lambda: ClassTask(
        "fashion_mnist_canvas_class",
        class_sources.CanvasClassSource(class_sources.FashionMnistClassSource()),
        description="Fashion-MNIST items on 16-96 px canvases of random aspect"),
    "easy_vqa_shape_canvas_class": lambda: ClassTask(
        "easy_vqa_shape_canvas_class",
        class_sources.CanvasClassSource(class_sources.EasyVqaClassSource("shape")),
        description="easy-VQA shapes on 16-96 px canvases of random aspect"),
}
_ADDED: Dict[str, ClassTask] = {}
_LOCK = threading.Lock()


def add_class_task(name: str, source: class_sources.ClassSource, *, flip: bool = True,
                   description: str = "", replace: bool = False) -> ClassTask:
  """Registers a classification task (``replace`` re-registers an existing name)."""
  with _LOCK:
    if not replace and (name in _ADDED or name in _BUILTINS):
      raise ValueError(f"class task {name!r} is already registered (pass replace=True)")
    _ADDED[name] = ClassTask(name, source, flip, description)
    _built.cache_clear()
    return _ADDED[name]


@functools.lru_cache(maxsize=None)
def _built(name: str) -> ClassTask:
  if name in _ADDED:
    return _ADDED[name]
  return _BUILTINS[name]()


def get_class_task(name: str) -> ClassTask:
  """The registered classification task ``name``."""
  if name not in _ADDED and name not in _BUILTINS:
    raise ValueError(f"no classification task {name!r}; registered: {list_class_tasks()}")
  return _built(name)


def list_class_tasks() -> List[str]:
  return sorted(set(_BUILTINS) | set(_ADDED))
