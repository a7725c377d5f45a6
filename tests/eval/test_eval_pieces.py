"""The evaluator's TF-free parts: postprocessors and the aux-value metrics (the tokenizer:
tests/test_tokenizer.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from palix import loc_tokens
from palix.eval import aux_metrics, postprocessors
from palix.eval.metrics import vqa_accuracy

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def test_one_easy_vqa_answer_becomes_ten_agreeing_humans():
  target = postprocessors.vqa("circle", {"answers": ("circle",)}, is_target=True)
  assert target == {"answers": ["circle"] * 10}
  # Ten agreeing humans: strict match after whitespace cleaning (no normalisation).
  scores = vqa_accuracy([target] * 3, ["circle", " circle\n", "Circle"])
  assert scores["vqa_accuracy"] == pytest.approx(200 / 3)
  # One answer given as is would make every prediction score 0 (leave-one-out).
  assert vqa_accuracy([["circle"]], ["circle"])["vqa_accuracy"] == 0.0


def test_vqav2_answers_and_types_pass_through():
  answers = ("2",) * 3 + ("two",) * 7
  target = postprocessors.vqa("2", {"answers": answers, "answer_type": ("number",),
                                    "question_id": ("7",)}, is_target=True)
  assert target == {"answers": list(answers), "answer_type": "number"}
  assert postprocessors.vqa(" two ", {}, is_target=False) == " two "


def test_caption_references_drop_the_padding():
  example = {"references": ("A dog.", "a brown dog", "", "")}
  assert postprocessors.caption("A dog.", example, is_target=True) == ["A dog.", "a brown dog"]
  assert postprocessors.caption("a cat", {}, is_target=True) == ["a cat"]


def test_detection_targets_prefer_exact_boxes_and_need_the_image_size():
  text = loc_tokens.detection_target([(0.1, 0.2, 0.5, 0.6)], ["cat"])
  exact = {"boxes": [(0.1, 0.2, 0.5, 0.6)], "labels": ["cat"], "image_size": (480, 640)}
  assert postprocessors.detection(text, exact, is_target=True) == exact
  parsed = postprocessors.detection(text, {"image_size": (480, 640)}, is_target=True)
  assert parsed["labels"] == ["cat"]
  np.testing.assert_allclose(parsed["boxes"], [(0.1, 0.2, 0.5, 0.6)], atol=0.5 / 1023)
  with pytest.raises(ValueError, match="record 3.*image_size"):
    postprocessors.detection(text, {"record_id": "record 3"}, is_target=True)


def test_zero_shot_accuracy_from_class_scores():
  metric = aux_metrics.ZeroShotClassification(("a cat", "a dog", "a cow"))
  table = np.array([[0.0, -1.0, -2.0], [-3.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
  aux = {"class_scores": {metric.class_texts: table}}
  # argmax: cat, dog (tie: first), cat (tie: first)
  assert metric(["a cat", "a dog", "a cow"], ["", "", ""], aux) == {
      "zero_shot_accuracy": pytest.approx(2 / 3)}
  with pytest.raises(ValueError, match="'a horse', which is not one of the 3 class texts"):
    metric(["a horse", "a dog", "a cow"], ["", "", ""], aux)
  with pytest.raises(ValueError, match="class_scores"):
    metric(["a cat"], [""], {})
  with pytest.raises(ValueError, match="distinct"):
    aux_metrics.ZeroShotClassification(("a", "a"))


def test_detection_map_scores_boxes_by_their_own_tokens():
  pieces = ["<loc0100>", "<loc0200>", "<loc0600>", "<loc0700>", "\u2581cat", "\u2581;",
            "\u2581", "<loc0000>", "<loc0000>", "<loc0010>", "<loc0010>", "\u2581cat"]
  good_first = [-0.1] * 5 + [-0.2] + [-0.3] + [-2.0] * 5
  bad_first = [-2.0] * 5 + [-0.2] + [-0.3] + [-0.1] * 5
  target = {"boxes": [[0.1, 0.2, 0.6, 0.7]], "labels": ["cat"], "image_size": (1023, 1023)}
  best = aux_metrics.coco_map_from_token_scores(
      [target], ["text"], {"pieces": [pieces], "logprobs": [good_first]})
  worst = aux_metrics.coco_map_from_token_scores(
      [target], ["text"], {"pieces": [pieces], "logprobs": [bad_first]})
  assert best["num_detections"] == worst["num_detections"] == 2
  assert best["mAP_50"] == pytest.approx(1.0)  # the true box ranks first
  assert worst["mAP_50"] == pytest.approx(0.5)  # a false positive ranks above it
  with pytest.raises(ValueError, match="aux_values\\['pieces'\\] has 1 entries for 2"):
    aux_metrics.coco_map_from_token_scores([target] * 2, ["a", "b"],
                                           {"pieces": [pieces], "logprobs": [good_first]})


def test_the_evaluator_and_palix_eval_import_without_tensorflow():
  """TensorFlow and seqio load only when an evaluation starts (``palix.tasks``)."""
  script = (
      "import sys\n"
      "for name in ('tensorflow', 'seqio'):\n"
      "  sys.modules[name] = None  # any import of them raises ImportError\n"
      "import palix.cli.eval, palix.eval.evaluator, palix.eval.task_predictions\n"
      "import palix.eval.report_samples, palix.eval.task_scoring, palix.eval.postprocessors\n"
      "print('NO_TF_OK')\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "NO_TF_OK" in result.stdout
