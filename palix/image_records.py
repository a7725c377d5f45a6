"""JSONL files of image records: one JSON object per line with an ``image`` path (relative to the
file's folder) and other fields. ``palix infer --examples`` (in-context examples) and the OWL-ST
stages (captions, queries) read them; errors name the file and line.
"""

import json
import os
from typing import List, Sequence


def read_image_records(path: str, fields: Sequence[str], *, strings: Sequence[str] = ("image",),
                       what: str = "") -> List[dict]:
  """The records of ``path``, each with every key of ``fields`` (``strings`` among them must be
  strings; ``image`` always is), ``image`` resolved against the file's folder and ``where`` =
  ``'file:line'``. Blank lines are skipped; a file without records is an error. ``what`` prefixes
  the file-not-found error (the flag that named the file)."""
  if not os.path.isfile(path):
    raise ValueError(f"{what + ': ' if what else ''}{path}: file not found")
  strings = tuple(dict.fromkeys(("image", *strings)))
  folder = os.path.dirname(os.path.abspath(path))
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from e
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: a record must be a JSON object with {list(fields)}")
      missing = [k for k in fields if k not in record]
      if missing:
        raise ValueError(f"{path}:{number}: missing field(s) {missing}")
      not_strings = [k for k in strings if not isinstance(record.get(k), str)]
      if not_strings:
        raise ValueError(f"{path}:{number}: {not_strings} must be strings")
      records.append(dict(record, image=os.path.join(folder, record["image"]),
                          where=f"{path}:{number}"))
  if not records:
    raise ValueError(f"{path}: no records")
  return records
