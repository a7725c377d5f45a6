"""The evaluator's TF-free parts: detokenizer, postprocessors and the aux-value metrics."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palix import loc_tokens
from palix.eval import aux_metrics, postprocessors
from palix.eval.detokenizer import Detokenizer, generated_ids
from palix.eval.metrics import vqa_accuracy
from palix.eval.metrics.detection_parsing import SENTENCEPIECE_SPACE

MODEL = os.path.join(os.path.dirname(__file__), "..", "..", "tasks", "assets", "palix_sp.model")


@pytest.fixture(scope="module")
def detokenizer():
  return Detokenizer(MODEL)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list("ab cQ-;é☃<>0") + ["<loc0012>", " bag"]), max_size=20))
def test_pieces_concatenate_to_the_decoded_text(parts):
  text = "".join(parts)
  detokenizer = Detokenizer(MODEL)
  ids = detokenizer.encode(text)
  joined = "".join(detokenizer.pieces(ids)).replace(SENTENCEPIECE_SPACE, " ")
  assert joined.lstrip(" ") == detokenizer.text(ids).lstrip(" ")


def test_byte_fallback_pieces_become_their_characters(detokenizer):
  ids = detokenizer.encode("☃")
  assert len(ids) >= 3  # three UTF-8 bytes, none of them a learned piece
  pieces = [p for p in detokenizer.pieces(ids) if p]
  assert "".join(pieces).replace(SENTENCEPIECE_SPACE, " ").strip() == "☃"


def test_ids_outside_the_vocabulary_decode_as_unk(detokenizer):
  far = detokenizer.vocab_size + 100
  assert detokenizer.pieces([far, 3]) == ["<unk>", "<loc0000>"]
  assert detokenizer.text([far]) == detokenizer.text([2])


def test_generated_ids_stop_at_eos_or_padding():
  assert generated_ids([5, 6, 1, 7, 0]) == [5, 6]
  assert generated_ids([5, 0, 6, 1]) == [5]
  assert generated_ids(np.array([5, 6, 7])) == [5, 6, 7]


def test_target_tokens_end_with_eos_and_report_cutting(detokenizer):
  tokens, cut = detokenizer.target_tokens("a photo of a trouser", 16)
  ids = detokenizer.encode("a photo of a trouser")
  assert not cut and tokens.tolist() == ids + [1] + [0] * (16 - len(ids) - 1)
  tokens, cut = detokenizer.target_tokens("a photo of a trouser", 3)
  assert cut and tokens.tolist() == ids[:2] + [1]


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
      "import palix.eval.report_samples, palix.eval.seqio_metrics, palix.eval.postprocessors\n"
      "print('NO_TF_OK')\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=os.path.join(os.path.dirname(MODEL), "..", ".."))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "NO_TF_OK" in result.stdout
