"""Loaders of the official VQAv2 / COCO-captions JSON files, and the TF-free import rule."""

import json
import subprocess
import sys

import pytest

from palix.eval.metrics import load_coco_caption_files, load_vqa_files


def _write(path, content):
  path.write_text(json.dumps(content) if not isinstance(content, str) else content)
  return str(path)


def _vqa_annotations(tmp_path):
  return _write(tmp_path / "ann.json", {"annotations": [
      {"question_id": q, "answer_type": "other", "question_type": "what",
       "answers": [{"answer": "red", "answer_id": i} for i in range(1, 11)]} for q in (10, 11)]})


def test_vqa_files_are_read_in_annotation_order(tmp_path):
  results = _write(tmp_path / "res.json", [{"question_id": 11, "answer": "blue"},
                                           {"question_id": 10, "answer": "red"}])
  targets, predictions, ids = load_vqa_files(_vqa_annotations(tmp_path), results)
  assert ids == [10, 11] and predictions == ["red", "blue"]
  assert targets[0] == {"answers": ["red"] * 10, "answer_type": "other", "question_type": "what"}


@pytest.mark.parametrize("results,message", [
    ([{"question_id": 10, "answer": "red"}], "1 annotated questions have no answer"),
    ([{"question_id": 10, "answer": "a"}, {"question_id": 11, "answer": "b"},
      {"question_id": 12, "answer": "c"}], "1 answered questions are not annotated"),
    ([{"question_id": 10, "answer": "a"}, {"question_id": 10, "answer": "b"}],
     "question_id 10 appears twice"),
    ([{"question_id": 10}], "entry 0 needs 'question_id' and 'answer'"),
    ({"question_id": 10}, "a result file is a JSON list"),
    ("[{", "not valid JSON"),
])
def test_vqa_result_errors(tmp_path, results, message):
  with pytest.raises(ValueError, match=message):
    load_vqa_files(_vqa_annotations(tmp_path), _write(tmp_path / "res.json", results))


def test_caption_files(tmp_path):
  annotations = _write(tmp_path / "caps.json", {"annotations": [
      {"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"},
      {"image_id": 1, "caption": "c"}]})
  results = _write(tmp_path / "res.json", [{"image_id": 2, "caption": "x"}])
  assert load_coco_caption_files(annotations, results) == ([["b"]], ["x"], [2])
  with pytest.raises(ValueError, match="1 image ids have no reference captions"):
    load_coco_caption_files(annotations, _write(tmp_path / "bad.json",
                                                [{"image_id": 3, "caption": "x"}]))
  with pytest.raises(ValueError, match="expected"):
    load_coco_caption_files(_write(tmp_path / "x.json", {"images": []}), results)


def test_eval_packages_import_without_tensorflow():
  code = ("import sys, palix.eval.metrics, palix.eval.report, palix.eval.zero_shot; "
          "print(sorted(m for m in ('tensorflow', 'seqio', 'pycocotools', 'pycocoevalcap') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
