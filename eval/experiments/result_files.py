"""The result files of the experiment drivers: CSV rows in and out, figures, mean ± std."""

import csv
import os
from typing import List, Sequence, Tuple

import numpy as np


def write_csv(path: str, rows: Sequence[dict]) -> None:
  """``rows`` as a CSV with a header of every key (in first-seen order); creates the folder."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fields = list(dict.fromkeys(k for r in rows for k in r))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def read_csv(path: str) -> List[dict]:
  """Rows of a CSV ``write_csv`` wrote, numbers as numbers (``[]`` if there is no file)."""
  if not os.path.exists(path):
    return []

  def number(value):
    for kind in (int, float):
      try:
        return kind(value)
      except ValueError:
        pass
    return value

  with open(path, newline="") as f:
    return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def save_figure(fig, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)


def mean_std(values) -> Tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def mean_and_std(values, digits: int = 4) -> str:
  """``'mean ± std'`` with ``digits`` decimals."""
  mean, std = mean_std(values)
  return f"{mean:.{digits}f} ± {std:.{digits}f}"
