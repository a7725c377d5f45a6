"""Reading a sweep's runs (CSV or JSON) for ``palix sparsity fit``, with errors that name the row.

Columns (CSV header, or keys of each object in a JSON list): ``sparsity`` in [0, 1),
``nonzero_params`` > 0 and ``data`` > 0 in the units the fit should use, ``loss`` > 0. Other
columns (seed, width, ...) are kept as they are and ignored by the fit.
"""

import csv
import json
import math
import pathlib
from typing import Dict, List

import numpy as np

COLUMNS = ("sparsity", "nonzero_params", "data", "loss")


def _number(value, where: str, column: str) -> float:
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: {column} = {value!r} is not a number") from None
  if not math.isfinite(x):
    raise ValueError(f"{where}: {column} = {value!r} is not finite")
  return x


def _check_row(row: Dict, where: str) -> Dict[str, float]:
  missing = [c for c in COLUMNS if c not in row or row[c] in (None, "")]
  if missing:
    raise ValueError(f"{where}: missing {', '.join(missing)} (each run needs {', '.join(COLUMNS)})")
  out = {c: _number(row[c], where, c) for c in COLUMNS}
  if not 0.0 <= out["sparsity"] < 1.0:
    raise ValueError(f"{where}: sparsity = {row['sparsity']!r} is outside [0, 1)")
  for column in ("nonzero_params", "data", "loss"):
    if out[column] <= 0:
      raise ValueError(f"{where}: {column} = {row[column]!r} must be positive")
  return out


def read_runs(path: str) -> List[Dict]:
  """The runs as dicts (the four columns as floats, other columns unchanged)."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ValueError(f"runs file {path!r} does not exist")
  text = p.read_text()
  rows = []
  if p.suffix.lower() == ".json":
    try:
      raw = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
    if isinstance(raw, dict) and "runs" in raw:
      raw = raw["runs"]
    if not isinstance(raw, list):
      raise ValueError(f"{path}: expected a list of runs (or {{\"runs\": [...]}}), got "
                       f"{type(raw).__name__}")
    for i, entry in enumerate(raw):
      where = f"{path}: run {i} (0-based)"
      if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(COLUMNS)}")
      rows.append({**entry, **_check_row(entry, where)})
  else:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    absent = [c for c in COLUMNS if c not in header]
    if absent:
      raise ValueError(f"{path}: the header {header} lacks the columns {absent}")
    for row in reader:
      where = f"{path}: line {reader.line_num}"
      if None in row:
        raise ValueError(f"{where}: more fields than the header's {len(header)}")
      rows.append({**row, **_check_row(row, where)})
  if not rows:
    raise ValueError(f"{path}: no runs")
  return rows


def columns(rows: List[Dict]):
  """``(sparsity, nonzero_params, data, loss)`` as float64 arrays."""
  return tuple(np.array([r[c] for r in rows], np.float64) for c in COLUMNS)
