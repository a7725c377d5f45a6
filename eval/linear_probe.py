"""Linear probe on frozen image features: closed-form ridge regression to one-hot targets.

This is the few-shot evaluation of CapPa and big_vision (``fewshot_lsr``): features (for CapPa the
global average of the encoder's tokens, ``CapPaModel.encode_pooled``) are standardised with the
training statistics, a linear map is fitted to ``2 * one_hot - 1`` targets by ridge regression in
closed form, and the class with the highest output wins. The regulariser ``l2`` is picked from a
grid on a held-out part of the training set unless given.

Pure numpy (float64); nothing here imports TensorFlow or needs a model.
"""

import dataclasses
from typing import Dict, Optional, Sequence

import numpy as np

DEFAULT_L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclasses.dataclass
class LinearProbe:
  """``scores = ((features - mean) / std) @ weights + bias``."""
  mean: np.ndarray  # [d]
  std: np.ndarray  # [d]
  weights: np.ndarray  # [d, C]
  bias: np.ndarray  # [C]
  l2: float

  def scores(self, features) -> np.ndarray:
    x = _check_features(features, "features")
    if x.shape[1] != self.mean.shape[0]:
      raise ValueError(f"features have {x.shape[1]} dimensions; the probe was fitted on "
                       f"{self.mean.shape[0]}")
    return ((x - self.mean) / self.std) @ self.weights + self.bias

  def predict(self, features) -> np.ndarray:
    return np.argmax(self.scores(features), axis=1)

  def accuracy(self, features, labels) -> float:
    labels = _check_labels(labels, len(features), self.weights.shape[1])
    return float(np.mean(self.predict(features) == labels))


def _check_features(features, name):
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or not len(x):
    raise ValueError(f"{name} must be a non-empty [num_examples, dim] array; got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contain NaN or infinite values")
  return x


def _check_labels(labels, n, num_classes):
  y = np.asarray(labels)
  if y.shape != (n,):
    raise ValueError(f"labels have shape {y.shape}; expected ({n},), one per feature row")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be integer class indices; got dtype {y.dtype}")
  if len(y) and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"labels must be in [0, {num_classes}); got values in "
                     f"[{y.min()}, {y.max()}]")
  return y


def fit(features, labels, num_classes: Optional[int] = None, l2: float = 1.0) -> LinearProbe:
  """Ridge regression ``min ||X W - Y||^2 + l2 ||W||^2`` with an unregularised bias.

  Solved in the primal (``d x d`` system) or the dual (``n x n``), whichever is smaller; both give
  the same ``W``.
  """
  x = _check_features(features, "features")
  num_classes = int(num_classes if num_classes is not None else np.max(labels) + 1)
  y = _check_labels(labels, len(x), num_classes)
  if l2 <= 0:
    raise ValueError(f"l2 must be positive; got {l2}")
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  x = (x - mean) / std
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  bias = targets.mean(axis=0)
  t = targets - bias  # the centred features make the bias the target mean
  n, d = x.shape
  if d <= n:
    weights = np.linalg.solve(x.T @ x + l2 * np.eye(d), x.T @ t)
  else:
    weights = x.T @ np.linalg.solve(x @ x.T + l2 * np.eye(n), t)
  return LinearProbe(mean=mean, std=std, weights=weights, bias=bias, l2=float(l2))


def fit_with_holdout(features, labels, num_classes: Optional[int] = None,
                     l2_grid: Sequence[float] = DEFAULT_L2_GRID, holdout_fraction: float = 0.2,
                     seed: int = 0) -> LinearProbe:
  """Picks ``l2`` on a random held-out part of the training data, then refits on all of it."""
  x = _check_features(features, "features")
  num_classes = int(num_classes if num_classes is not None else np.max(labels) + 1)
  y = _check_labels(labels, len(x), num_classes)
  if not 0 < holdout_fraction < 1:
    raise ValueError(f"holdout_fraction must be in (0, 1); got {holdout_fraction}")
  if not l2_grid:
    raise ValueError("l2_grid is empty")
  order = np.random.default_rng(seed).permutation(len(x))
  n_hold = int(round(holdout_fraction * len(x)))
  if n_hold < 1 or n_hold >= len(x):
    raise ValueError(f"{len(x)} training examples are too few to hold out {holdout_fraction:.0%}")
  held, kept = order[:n_hold], order[n_hold:]
  accuracies = [fit(x[kept], y[kept], num_classes, l2).accuracy(x[held], y[held])
                for l2 in l2_grid]
  best = l2_grid[int(np.argmax(accuracies))]  # ties: the smallest l2 in grid order
  return fit(x, y, num_classes, best)


def evaluate(train_features, train_labels, test_features, test_labels,
             num_classes: Optional[int] = None, l2: Optional[float] = None,
             l2_grid: Sequence[float] = DEFAULT_L2_GRID) -> Dict[str, float]:
  """Fits on the training features (``l2`` given, or chosen by holdout) and scores the test set.

  Returns ``{'linear_probe_accuracy': ..., 'linear_probe_l2': ...}``.
  """
  if num_classes is None:
    num_classes = int(max(np.max(train_labels), np.max(test_labels)) + 1)
  if l2 is None:
    probe = fit_with_holdout(train_features, train_labels, num_classes, l2_grid)
  else:
    probe = fit(train_features, train_labels, num_classes, l2)
  return {"linear_probe_accuracy": probe.accuracy(test_features, test_labels),
          "linear_probe_l2": probe.l2}


def extract_features(encode_fn, images, batch_size: int = 256) -> np.ndarray:
  """``encode_fn(images[i:i+batch_size]) -> [b, d]`` over all images, as one float32 array.

  For CapPa: ``extract_features(lambda x: model.encode_pooled(params, x), images)``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  chunks = [np.asarray(encode_fn(images[i:i + batch_size]), np.float32)
            for i in range(0, len(images), batch_size)]
  if not chunks:
    raise ValueError("no images to encode")
  return np.concatenate(chunks, axis=0)
