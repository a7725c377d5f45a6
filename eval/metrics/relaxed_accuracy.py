"""ChartQA relaxed accuracy, with pix2struct's semantics (the de-facto reference; ChartQA ships no
official script).

A prediction is correct if both strings parse as numbers and ``|pred - gold| / |gold| <= 0.05``,
otherwise if the two strings are equal ignoring case. Parsing is Python's ``float`` after turning a
trailing ``%`` into a division by 100 (``"12%"`` == ``0.12``, but ``"12%"`` vs ``"12"`` differ by
100x). Deliberately *not* done, as in pix2struct and big_vision: stripping thousands separators
(``"1,000"`` is a string), units or currency signs; stripping spaces around a string answer. A gold
value of 0 (or one that does not parse) falls back to the string comparison, and years are
compared numerically (``"2019"`` accepts ``"2000"``). With several gold answers the best one counts.
"""

from typing import Dict, List, Optional, Sequence

from palix.eval.metrics.answer_lists import AnswerSet, as_answer_list, check_predictions


def _to_float(text: str) -> Optional[float]:
  try:
    if text.endswith("%"):
      return float(text.rstrip("%")) / 100.0
    return float(text)
  except ValueError:
    return None


def relaxed_match(gold: str, prediction: str, max_relative_change: float = 0.05) -> bool:
  """pix2struct's ``relaxed_correctness(target, prediction)``."""
  pred_value, gold_value = _to_float(prediction), _to_float(gold)
  if pred_value is not None and gold_value:
    return abs(pred_value - gold_value) / abs(gold_value) <= max_relative_change
  return prediction.lower() == gold.lower()


def relaxed_accuracy_scores(targets: Sequence[AnswerSet], predictions: Sequence[str],
                            max_relative_change: float = 0.05) -> List[float]:
  """Per-question 1.0 / 0.0."""
  check_predictions(targets, predictions)
  return [float(any(relaxed_match(gold, prediction, max_relative_change)
                    for gold in as_answer_list(index, target)))
          for index, (target, prediction) in enumerate(zip(targets, predictions))]


def relaxed_accuracy(targets: Sequence[AnswerSet], predictions: Sequence[str],
                     max_relative_change: float = 0.05) -> Dict[str, float]:
  """seqio-style metric: ``{"relaxed_accuracy": fraction correct}`` in [0, 1]."""
  scores = relaxed_accuracy_scores(targets, predictions, max_relative_change)
  return {"relaxed_accuracy": sum(scores) / len(scores)}
