"""ANLS, the Average Normalized Levenshtein Similarity of DocVQA / InfographicVQA / ST-VQA.

Following the RRC scoring (and the ``anls`` package that ports it): both strings are lower-cased,
stripped and have internal whitespace runs collapsed to one space; ``NL = lev(gold, pred) /
max(len(gold), len(pred))``; a question scores ``1 - NL`` if ``NL < threshold`` (strictly; 0.5 by
default) else 0, maximised over its gold answers; ANLS is the mean over questions, in [0, 1].
Two empty strings are an exact match (score 1).

Variants that give different numbers: pix2struct lower-cases only (no whitespace collapse);
MMF/LLaVA keep ``NL <= 0.5`` (non-strict); big_vision is case-sensitive by default.
"""

from typing import Dict, List, Sequence

from palix.eval.metrics.answer_lists import AnswerSet, as_answer_list, check_predictions


def levenshtein(a: str, b: str) -> int:
  """Character edit distance (insertions, deletions, substitutions all cost 1)."""
  if len(a) < len(b):
    a, b = b, a
  previous = list(range(len(b) + 1))
  for i, char_a in enumerate(a, start=1):
    current = [i]
    for j, char_b in enumerate(b, start=1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
    previous = current
  return previous[-1]


def _normalize(text: str) -> str:
  return " ".join(text.strip().lower().split())


def normalized_levenshtein_similarity(gold: str, prediction: str, threshold: float = 0.5) -> float:
  """``1 - NL`` if ``NL < threshold`` else 0, on normalised strings."""
  gold, prediction = _normalize(gold), _normalize(prediction)
  length = max(len(gold), len(prediction))
  if length == 0:
    return 1.0
  distance = levenshtein(gold, prediction) / length
  return 1.0 - distance if distance < threshold else 0.0


def anls_scores(targets: Sequence[AnswerSet], predictions: Sequence[str],
                threshold: float = 0.5) -> List[float]:
  """Per-question ANLS (max over that question's gold answers)."""
  check_predictions(targets, predictions)
  return [max(normalized_levenshtein_similarity(gold, prediction, threshold)
              for gold in as_answer_list(index, target))
          for index, (target, prediction) in enumerate(zip(targets, predictions))]


def anls(targets: Sequence[AnswerSet], predictions: Sequence[str],
         threshold: float = 0.5) -> Dict[str, float]:
  """seqio-style metric: ``{"anls": mean per-question score}`` in [0, 1]."""
  scores = anls_scores(targets, predictions, threshold)
  return {"anls": sum(scores) / len(scores)}
