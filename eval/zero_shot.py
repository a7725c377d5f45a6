"""Zero-shot classification by scoring: pick the class text the model finds most likely.

For each image every candidate class text (e.g. ``"a photo of a cat"``) is scored with a
``score_fn`` that returns the log-likelihood of the text given the image (the model's
``score_batch`` wrapped by the evaluator); the prediction is the class with the highest score.
Ties go to the first class (``numpy.argmax``). Scores are used as given: if class texts differ in
length, a summed log-likelihood favours short texts, so pass a length-normalised ``score_fn`` if
that matters for your label set.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# score_fn([(image, text), ...]) -> one log-likelihood per pair
ScoreFn = Callable[[Sequence[Tuple[Any, str]]], Sequence[float]]


@dataclasses.dataclass
class ZeroShotResult:
  scores: np.ndarray  # [num_images, num_classes] log-likelihoods
  predictions: np.ndarray  # [num_images] index of the best class
  predicted_texts: List[str]
  accuracy: Optional[float]  # fraction correct, when labels were given

  def metrics(self) -> Dict[str, float]:
    return {} if self.accuracy is None else {"zero_shot_accuracy": self.accuracy}


def classify(score_fn: ScoreFn, images: Sequence[Any], class_texts: Sequence[str], *,
             labels: Optional[Sequence[int]] = None, batch_size: int = 64) -> ZeroShotResult:
  """Score every (image, class text) pair in batches of ``batch_size`` and take the argmax.

  Args:
    score_fn: maps a list of ``(image, text)`` pairs to their log-likelihoods.
    images: the images (anything ``score_fn`` accepts).
    class_texts: one candidate text per class.
    labels: optional true class index per image; gives ``accuracy``.
    batch_size: pairs per ``score_fn`` call (pairs are ordered image-major).
  """
  if not class_texts:
    raise ValueError("zero-shot classification needs at least one class text")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  if labels is not None:
    if len(labels) != len(images):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    bad = [(i, y) for i, y in enumerate(labels) if not 0 <= int(y) < len(class_texts)]
    if bad:
      raise ValueError(f"label {bad[0][1]} of image {bad[0][0]} is not a class index in "
                       f"[0, {len(class_texts)})")
  pairs = [(image, text) for image in images for text in class_texts]
  flat = np.empty(len(pairs), np.float64)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    scores = np.asarray(score_fn(chunk), np.float64).reshape(-1)
    if scores.shape[0] != len(chunk):
      raise ValueError(f"score_fn returned {scores.shape[0]} scores for {len(chunk)} pairs")
    if np.isnan(scores).any():
      index = start + int(np.flatnonzero(np.isnan(scores))[0])
      raise ValueError(f"score_fn returned NaN for image {index // len(class_texts)}, class "
                       f"{index % len(class_texts)} ({class_texts[index % len(class_texts)]!r})")
    flat[start:start + len(chunk)] = scores
  table = flat.reshape(len(images), len(class_texts))
  predictions = np.argmax(table, axis=1) if len(images) else np.zeros((0,), np.int64)
  accuracy = None
  if labels is not None and len(images):
    accuracy = float(np.mean(predictions == np.asarray(labels, np.int64)))
  return ZeroShotResult(scores=table, predictions=predictions,
                        predicted_texts=[class_texts[int(k)] for k in predictions],
                        accuracy=accuracy)
