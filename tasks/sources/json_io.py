"""Reading annotation JSON with errors that name the file, line and field."""

import json
import os
from typing import Any, Mapping

from palix.tasks.sources import base


def read_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise base.DataError(f"{path}: annotation file not found")
  with open(path, "r", encoding="utf-8") as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise base.DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from e


def field(record: Mapping[str, Any], key: str, kind, where: str):
  """``record[key]``, checked to be of ``kind`` (a type or tuple of types)."""
  if not isinstance(record, Mapping):
    raise base.DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if key not in record:
    raise base.DataError(f"{where}: missing field {key!r}")
  value = record[key]
  if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
    names = "/".join(k.__name__ for k in _as_tuple(kind))
    raise base.DataError(f"{where}: field {key!r} should be {names}, got {type(value).__name__}")
  return value


def _as_tuple(kind):
  return kind if isinstance(kind, tuple) else (kind,)
