"""VQAv2 accuracy, computed exactly as the official evaluation (GT-Vision-Lab/VQA ``vqaEval.py``).

Per question, with the human answers ``gts`` (ten in VQAv2) and the prediction ``pred``:

1. newlines/tabs become spaces and everything is stripped;
2. **only if the human answers disagree** (``len(set(gts)) > 1``) the answers *and* the prediction
   are normalised (:mod:`palix.eval.metrics.vqa_answer_processing`). When all humans agree nothing
   is normalised, so ``"2"`` does not match ten times ``"two"``;
3. accuracy = mean over the leave-one-out subsets (each human answer left out once) of
   ``min(1, matches among the others / 3)``.

The split score is the mean over questions, in percent (the official tool prints it rounded to two
decimals; we return it unrounded). Per-answer-type (and optionally per-question-type) means are
added when the targets carry ``answer_type`` / ``question_type``.
"""

from typing import Any, Dict, List, Mapping, Sequence, Union

from palix.eval.metrics import vqa_answer_processing as processing

# A target is the list of human answers, or a mapping with "answers" and optional
# "answer_type" / "question_type" (the fields of a VQAv2 annotation).
VqaTarget = Union[Sequence[str], Mapping[str, Any]]


def vqa_answer_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
  """Official VQA accuracy of one prediction, in [0, 1]."""
  if isinstance(human_answers, str) or len(human_answers) == 0:
    raise ValueError(f"human_answers must be a non-empty list of strings; got {human_answers!r}")
  answers = [processing.clean_whitespace(a) for a in human_answers]
  pred = processing.clean_whitespace(prediction)
  if len(set(answers)) > 1:
    answers = [processing.normalize_answer(a) for a in answers]
    pred = processing.normalize_answer(pred)
  # Leave-one-out by position: the official code removes one answer *dict* (unique answer_id).
  matches = sum(a == pred for a in answers)
  subset_scores = [min(1.0, (matches - (a == pred)) / 3.0) for a in answers]
  return sum(subset_scores) / len(subset_scores)


def _split_target(index: int, target: VqaTarget):
  if isinstance(target, Mapping):
    if "answers" not in target:
      raise ValueError(f"VQA target {index} is a mapping without an 'answers' key: "
                       f"keys {sorted(target)}")
    answers = target["answers"]
  else:
    answers, target = target, {}
  if isinstance(answers, str) or not all(isinstance(a, str) for a in answers) or not answers:
    raise ValueError(f"VQA target {index}: 'answers' must be a non-empty list of strings; "
                     f"got {answers!r}")
  return list(answers), target.get("answer_type"), target.get("question_type")


def vqa_question_accuracies(targets: Sequence[VqaTarget],
                            predictions: Sequence[str]) -> List[float]:
  """Per-question official accuracy in [0, 1], in the order given."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} VQA targets but {len(predictions)} predictions")
  scores = []
  for index, (target, prediction) in enumerate(zip(targets, predictions)):
    if not isinstance(prediction, str):
      raise ValueError(f"VQA prediction {index} must be a string; got {type(prediction).__name__}")
    scores.append(vqa_answer_accuracy(prediction, _split_target(index, target)[0]))
  return scores


def vqa_accuracy(targets: Sequence[VqaTarget], predictions: Sequence[str], *,
                 by_question_type: bool = False) -> Dict[str, float]:
  """seqio-style metric: ``{"vqa_accuracy": percent, "vqa_accuracy/<answer_type>": percent, ...}``.

  Args:
    targets: per question, the human answers, or a mapping ``{"answers": [...],
      "answer_type": ..., "question_type": ...}``.
    predictions: the predicted answer strings.
    by_question_type: also report ``vqa_accuracy/question_type/<type>`` (65 types in VQAv2).
  """
  if not targets:
    raise ValueError("vqa_accuracy needs at least one question")
  scores = vqa_question_accuracies(targets, predictions)
  groups: Dict[str, List[float]] = {}
  for index, (target, score) in enumerate(zip(targets, scores)):
    _, answer_type, question_type = _split_target(index, target)
    if answer_type is not None:
      groups.setdefault(f"vqa_accuracy/{answer_type}", []).append(score)
    if by_question_type and question_type is not None:
      groups.setdefault(f"vqa_accuracy/question_type/{question_type}", []).append(score)
  metrics = {"vqa_accuracy": 100.0 * sum(scores) / len(scores)}
  for name in sorted(groups):
    metrics[name] = 100.0 * sum(groups[name]) / len(groups[name])
  return metrics
