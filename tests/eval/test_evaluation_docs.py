"""The Python snippets of docs/evaluation.md run as written, on small official-format files."""

import contextlib
import io
import json
import os
import re

import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "evaluation.md")


def _snippets():
  with open(DOC, encoding="utf-8") as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def _write_official_files(folder):
  vqa_annotations = {"annotations": [
      {"question_id": 1, "answer_type": "number", "question_type": "how many",
       "answers": [{"answer": a, "answer_id": i + 1}
                   for i, a in enumerate(["2"] * 3 + ["two"] * 7)]},
      {"question_id": 2, "answer_type": "yes/no", "question_type": "is the",
       "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)]},
  ]}
  captions = {"images": [{"id": 5}, {"id": 6}], "annotations": [
      {"image_id": 5, "id": 1, "caption": "A dog runs on the grass."},
      {"image_id": 5, "id": 2, "caption": "a brown dog running"},
      {"image_id": 6, "id": 3, "caption": "A red bus on a street."}]}
  files = {
      "v2_mscoco_val2014_annotations.json": vqa_annotations,
      "vqa_results.json": [{"question_id": 1, "answer": "two"}, {"question_id": 2, "answer": "no"}],
      "captions_val2014.json": captions,
      "caption_results.json": [{"image_id": 5, "caption": "a dog running on grass"},
                               {"image_id": 6, "caption": "a red bus"}],
  }
  for name, content in files.items():
    with open(os.path.join(folder, name), "w") as f:
      json.dump(content, f)


def _params():
  for index, code in enumerate(_snippets()):
    marks = [pytest.mark.slow] if "coco_caption_metrics" in code else []  # METEOR's JVM
    yield pytest.param(code, id=f"snippet{index}", marks=marks)


@pytest.mark.parametrize("code", list(_params()))
def test_snippet_runs(code, tmp_path, monkeypatch):
  _write_official_files(tmp_path)
  monkeypatch.chdir(tmp_path)
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    exec(compile(code, DOC, "exec"), {})
  if "vqa_accuracy(" in code:
    # q1: humans disagree -> 'two' normalised to '2', all 10 match -> 100; q2: 'no' -> 0
    assert "'vqa_accuracy': 50.0" in output.getvalue()
    assert "'vqa_accuracy/number': 100.0" in output.getvalue()
  if "coco_detection_map(" in code:
    # bins 100/200/600/700 of 1023 vs the target 0.1/0.2/0.6/0.7: IoU 0.93 on the 640x480 image,
    # above 9 of COCO's 10 thresholds (0.5 .. 0.9), below 0.95 -> AP 0.9
    assert output.getvalue().strip() == "0.9"
  if "write_report(" in code:
    assert os.path.isfile(tmp_path / "report_out" / "report.html")


def test_there_are_snippets():
  assert len(_snippets()) == 4
