"""Zero-shot classification bookkeeping, with a fake scorer read from a known table."""

import numpy as np
import pytest

from palix.eval.zero_shot import classify

CLASSES = ["a photo of a cat", "a photo of a dog", "a photo of a bird"]
# log-likelihood of class text c for image i (images are just their ids here)
TABLE = np.array([
    [-1.0, -2.0, -3.0],  # image 0 -> cat
    [-5.0, -0.5, -4.0],  # image 1 -> dog
    [-2.0, -2.0, -9.0],  # image 2 -> tie between cat and dog -> first (cat)
    [-7.0, -6.0, -0.1],  # image 3 -> bird
    [-np.inf, -3.0, -4.0],  # image 4 -> dog (an impossible class is fine)
])


class FakeScorer:
  def __init__(self):
    self.batch_sizes = []

  def __call__(self, pairs):
    self.batch_sizes.append(len(pairs))
    return [TABLE[image, CLASSES.index(text)] for image, text in pairs]


@pytest.mark.parametrize("batch_size", [1, 4, 7, 100])
def test_argmax_and_accuracy(batch_size):
  scorer = FakeScorer()
  labels = [0, 1, 1, 2, 0]  # images 2 and 4 are wrong -> 3/5
  result = classify(scorer, list(range(5)), CLASSES, labels=labels, batch_size=batch_size)
  np.testing.assert_array_equal(result.scores, TABLE)  # every pair landed in its own cell
  assert result.predictions.tolist() == [0, 1, 0, 2, 1]
  assert result.predicted_texts[3] == "a photo of a bird"
  assert result.accuracy == pytest.approx(0.6)
  assert result.metrics() == {"zero_shot_accuracy": pytest.approx(0.6)}
  # 15 pairs in chunks of at most batch_size
  assert sum(scorer.batch_sizes) == 15 and max(scorer.batch_sizes) <= batch_size


def test_without_labels():
  result = classify(FakeScorer(), [3], CLASSES)
  assert result.accuracy is None and result.metrics() == {} and result.predictions.tolist() == [2]


@pytest.mark.parametrize("kwargs,score_fn,message", [
    ({"labels": [0]}, FakeScorer(), "5 images but 1 labels"),
    ({"labels": [0, 1, 3, 0, 0]}, FakeScorer(), "label 3 of image 2 is not a class index"),
    ({}, lambda pairs: [0.0], "returned 1 scores for 15 pairs"),
    ({}, lambda pairs: [0.0] * 6 + [float("nan")] + [0.0] * 8,
     "NaN for image 2, class 0 ('a photo of a cat')"),
    ({"batch_size": 0}, FakeScorer(), "batch_size must be >= 1"),
])
def test_errors(kwargs, score_fn, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    classify(score_fn, list(range(5)), CLASSES, **{"batch_size": 100, **kwargs})
