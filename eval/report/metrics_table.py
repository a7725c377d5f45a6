"""Metrics as rows (nested dicts flattened with ``/``), as JSON-safe values and as markdown."""

import math
import numbers
from typing import Any, List, Mapping, Tuple


def json_safe(value: Any) -> Any:
  """numpy scalars/arrays -> Python; NaN/inf -> None (JSON has no NaN); dict keys -> str."""
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
    return json_safe(value.tolist())
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value) if math.isfinite(value) else None
  raise ValueError(f"metric value {value!r} of type {type(value).__name__} cannot go into JSON")


def rows(metrics: Mapping[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
  """``{"a": 1, "b": {"c": 2}}`` -> ``[("a", 1), ("b/c", 2)]`` in insertion order."""
  out = []
  for key, value in metrics.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.extend(rows(value, name + "/"))
    else:
      out.append((name, value))
  return out


def format_value(value: Any) -> str:
  """Numbers with up to 4 decimals (trailing zeros dropped); NaN/None as ``n/a``."""
  if value is None:
    return "n/a"
  if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
    value = value.item()
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return str(value)
  if isinstance(value, numbers.Integral):
    return str(value)
  if not math.isfinite(value):
    return "n/a" if math.isnan(value) else str(value)
  text = f"{value:.4f}".rstrip("0").rstrip(".")
  return "0" if text == "-0" else text


def markdown(title: str, metrics: Mapping[str, Any]) -> str:
  lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
  for name, value in rows(metrics):
    cells = [c.replace("|", "\\|").replace("\n", " ") for c in (name, format_value(value))]
    lines.append(f"| {cells[0]} | {cells[1]} |")
  return "\n".join(lines) + "\n"
