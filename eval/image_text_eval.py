"""Zero-shot classification by text query: the check of an image-text (SigLIP) model.

Each image is compared with one text per class (``a trouser``, ``an ankle boot``, ...) by the
model's pair logit; the prediction is the best-scoring class (ties: the first). The built-in
benchmark is one object per canvas, the objects of the shapes-detection test split (the same
sprites, never seen in training), 13 classes, chance 1/13.
"""

from typing import Dict, Optional, Sequence

import numpy as np

from palix.query_tokens import QueryTokenizer

DATA_SEED = 2  # canvases of their own (detection: 0, captions: 1)


def class_texts(class_names: Sequence[str]) -> list:
  """``a trouser`` / ``an ankle boot``: a class name as a caption would say it."""
  return [("an " if name[:1] in "aeiou" else "a ") + name for name in class_names]


def zero_shot_accuracy(model, params, images: np.ndarray, labels: np.ndarray,
                       class_names: Sequence[str], *, batch_size: int = 64,
                       vocabulary_path: Optional[str] = None) -> Dict[str, object]:
  """Accuracy (overall and per class) of ``model`` (an ``ImageTextModel``) on float images
  ``[N, S, S, 3]`` in [-1, 1] with integer ``labels`` into ``class_names``."""
  tokens = QueryTokenizer(model.max_text_len, vocabulary_path).encode(class_texts(class_names))
  predictions = []
  for start in range(0, len(images), batch_size):
    logits = model.zero_shot_logits(params, images[start:start + batch_size], tokens)
    predictions.append(np.argmax(np.asarray(logits), axis=1))
  predicted = np.concatenate(predictions)
  labels = np.asarray(labels)
  per_class = {name: float(np.mean(predicted[labels == k] == k))
               for k, name in enumerate(class_names) if np.any(labels == k)}
  return {"zero_shot_accuracy": float(np.mean(predicted == labels)), "per_class": per_class,
          "num_examples": int(len(labels))}


def single_object_canvases(num_examples: int = 500, image_size: int = 128, split: str = "test"):
  """``(images float [N, S, S, 3], labels [N], class names)``: one object per canvas."""
  # pylint: disable=g-import-not-at-top  # the data layer
  from palix.tasks import box_batches
  from palix.tasks.sources import shapes_detection
  canvases = shapes_detection.ShapesDetectionSource({split: num_examples}, min_objects=1,
                                                    max_objects=1, data_seed=DATA_SEED)
  names = list(shapes_detection.CLASSES)
  images, labels = [], []
  for index in range(num_examples):
    canvas, placed = canvases.objects(split, index)
    images.append(box_batches.resize(canvas, image_size))
    labels.append(names.index(placed[0][1]))
  return np.stack(images).astype(np.float32) / 127.5 - 1.0, np.array(labels), names
