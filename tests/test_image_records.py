"""palix.image_records: the JSONL reader of image records (palix infer --examples, OWL-ST)."""

import json
import os

import pytest

from palix.image_records import read_image_records


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def test_records_resolve_images_and_say_where(tmp_path):
  path = _write(tmp_path / "ex.jsonl", [json.dumps({"image": "a.png", "prompt": "p", "n": 3}), "",
                                        json.dumps({"image": "sub/b.png", "prompt": "q", "n": 4})])
  records = read_image_records(path, ("image", "prompt"), strings=("prompt",))
  assert [r["image"] for r in records] == [os.path.join(str(tmp_path), "a.png"),
                                           os.path.join(str(tmp_path), "sub/b.png")]
  assert [r["where"] for r in records] == [f"{path}:1", f"{path}:3"]  # blank line 2 skipped
  assert [r["n"] for r in records] == [3, 4]  # other fields kept


@pytest.mark.parametrize("lines, message", [
    (['{"image": "a.png"'], r"x.jsonl:1: not valid JSON"),
    (['{"image": "a.png", "prompt": "p"}', '["a.png"]'], r"x.jsonl:2: a record must be a JSON object"),
    (['{"image": "a.png"}'], r"x.jsonl:1: missing field\(s\) \['prompt'\]"),
    (['{"image": "a.png", "prompt": 5}'], r"x.jsonl:1: \['prompt'\] must be strings"),
    (['{"image": ["a.png"], "prompt": "p"}'], r"x.jsonl:1: \['image'\] must be strings"),
    (["", "  "], r"x.jsonl: no records"),
])
def test_bad_files_name_the_file_and_line(tmp_path, lines, message):
  path = _write(tmp_path / "x.jsonl", lines)
  with pytest.raises(ValueError, match=message):
    read_image_records(path, ("image", "prompt"), strings=("prompt",))


def test_a_missing_file_names_the_flag(tmp_path):
  with pytest.raises(ValueError, match=r"^--examples: .*nope.jsonl: file not found"):
    read_image_records(str(tmp_path / "nope.jsonl"), ("image",), what="--examples")
