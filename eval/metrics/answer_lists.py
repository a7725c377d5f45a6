"""Targets of short-answer metrics: one gold string or several acceptable ones per question."""

from typing import List, Sequence, Union

AnswerSet = Union[str, Sequence[str]]


def as_answer_list(index: int, target: AnswerSet) -> List[str]:
  """``"a"`` -> ``["a"]``; a non-empty list of strings is returned as a list; anything else is an
  error naming the target's position."""
  answers = [target] if isinstance(target, str) else list(target)
  if not answers or not all(isinstance(a, str) for a in answers):
    raise ValueError(f"target {index} must be a string or a non-empty list of strings; "
                     f"got {target!r}")
  return answers


def check_predictions(targets: Sequence[AnswerSet], predictions: Sequence[str]) -> None:
  """Same number of targets and predictions, every prediction a string, at least one question."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    raise ValueError("a metric needs at least one question")
  for index, prediction in enumerate(predictions):
    if not isinstance(prediction, str):
      raise ValueError(f"prediction {index} must be a string; got {type(prediction).__name__}")
