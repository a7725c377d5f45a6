"""Zero-shot classification by scoring: pick the class text the model finds most likely.

For each image every candidate class text (e.g. ``"a photo of a cat"``) gets the log-likelihood
of the text given the image; the prediction is the class with the highest score. Ties go to the
first class (``numpy.argmax``). Scores are used as given: if class texts differ in length, a
summed log-likelihood favours short texts, so pass a length-normalised ``score_fn`` if that
matters for your label set. Two ways to get the scores, one decision (:func:`decide`):

* :func:`classify`: a ``score_fn`` over ``(image, text)`` pairs (the benchmark evaluator wraps
  the model's ``score_batch`` so; ``palix.eval.task_predictions``);
* :func:`classify_with_class_scores`: a model's ``score_classes(params, images, class_targets)``,
  which encodes each image once and scores every class against it (``CapPaModel``).
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


def _check_labels(labels, num_images: int, num_classes: int) -> None:
  if len(labels) != num_images:
    raise ValueError(f"{num_images} images but {len(labels)} labels")
  bad = [(i, y) for i, y in enumerate(labels) if not 0 <= int(y) < num_classes]
  if bad:
    raise ValueError(f"label {bad[0][1]} of image {bad[0][0]} is not a class index in "
                     f"[0, {num_classes})")


def decide(table: np.ndarray, class_texts: Sequence[str],
           labels: Optional[Sequence[int]] = None) -> ZeroShotResult:
  """The classification of a ``[num_images, num_classes]`` score table: argmax and accuracy."""
  table = np.asarray(table, np.float64).reshape(-1, len(class_texts))
  if np.isnan(table).any():
    index = int(np.flatnonzero(np.isnan(table))[0])
    raise ValueError(f"a score is NaN for image {index // len(class_texts)}, class "
                     f"{index % len(class_texts)} ({class_texts[index % len(class_texts)]!r})")
  if labels is not None:
    _check_labels(labels, len(table), len(class_texts))
  predictions = np.argmax(table, axis=1) if len(table) else np.zeros((0,), np.int64)
  accuracy = None
  if labels is not None and len(table):
    accuracy = float(np.mean(predictions == np.asarray(labels, np.int64)))
  return ZeroShotResult(scores=table, predictions=predictions,
                        predicted_texts=[class_texts[int(k)] for k in predictions],
                        accuracy=accuracy)


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
    _check_labels(labels, len(images), len(class_texts))
  pairs = [(image, text) for image in images for text in class_texts]
  flat = np.empty(len(pairs), np.float64)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    scores = np.asarray(score_fn(chunk), np.float64).reshape(-1)
    if scores.shape[0] != len(chunk):
      raise ValueError(f"score_fn returned {scores.shape[0]} scores for {len(chunk)} pairs")
    flat[start:start + len(chunk)] = scores
  return decide(flat.reshape(len(images), len(class_texts)), class_texts, labels)


def class_targets(class_texts: Sequence[str], tokenize: Callable[[str], Sequence[int]],
                  eos_id: int = 1, max_len: Optional[int] = None) -> np.ndarray:
  """Target rows ``[C, L]`` of the class texts: ids, then EOS, then 0 padding (as the training
  targets), ``L`` the longest; ``tokenize`` gives ids without EOS."""
  rows = []
  for text in class_texts:
    ids = [int(t) for t in tokenize(text)]
    if any(t <= 0 for t in ids):
      raise ValueError(f"tokenize({text!r}) returned padding or negative ids {ids}")
    rows.append(ids + [eos_id])
  if not rows:
    raise ValueError("zero-shot classification needs at least one class text")
  length = max(len(r) for r in rows)
  if max_len is not None and length > max_len:
    raise ValueError(f"class text {class_texts[int(np.argmax([len(r) for r in rows]))]!r} is "
                     f"{length} tokens with EOS; the decoder has {max_len} positions")
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def classify_with_class_scores(model, params, images, class_texts: Sequence[str],
                               tokenize: Callable[[str], Sequence[int]], *,
                               labels: Optional[Sequence[int]] = None,
                               batch_size: int = 256) -> ZeroShotResult:
  """Zero-shot classification with a model's ``score_classes(params, images, targets)``
  (``CapPaModel``: the summed AR log-likelihood of each class text, the number ``score_batch``
  gives, with each image encoded once), ``batch_size`` images at a time.

  ``images`` are what ``score_classes`` takes (``[N, H, W, 3]`` or ``[N, 1, H, W, 3]``); class
  texts are tokenized with ``tokenize`` (ids without EOS; EOS is appended, as in the training
  targets, and the rows may not exceed the model's ``config.max_len``).
  """
  targets = class_targets(class_texts, tokenize, model.eos_id, model.config.max_len)
  images = np.asarray(images)
  scores = [np.asarray(model.score_classes(params, images[i:i + batch_size], targets))
            for i in range(0, len(images), batch_size)]
  table = np.concatenate(scores, axis=0) if scores else np.zeros((0, len(class_texts)))
  return decide(table, class_texts, labels)
