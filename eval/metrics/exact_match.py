"""Exact-match accuracy, strict or after SQuAD-style normalisation.

``exact_match`` compares strings as they are (after ``strip()`` only; generated text often ends with
a space). ``normalized_exact_match`` first lower-cases, deletes ASCII punctuation, drops the
articles ``a an the`` and collapses whitespace (the normalisation of the SQuAD v1.1 script), so
``"The Cat."`` matches ``"cat"``. Both take one gold string or a list of acceptable ones.
"""

import re
import string
from typing import Callable, Dict, List, Sequence

from palix.eval.metrics.answer_lists import AnswerSet, as_answer_list, check_predictions

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def squad_normalize(text: str) -> str:
  """Lower-case, delete punctuation, drop articles, collapse whitespace."""
  text = text.lower().translate(_PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _match_scores(targets, predictions, normalize: Callable[[str], str]) -> List[float]:
  check_predictions(targets, predictions)
  return [float(any(normalize(gold) == normalize(prediction)
                    for gold in as_answer_list(index, target)))
          for index, (target, prediction) in enumerate(zip(targets, predictions))]


def exact_match(targets: Sequence[AnswerSet], predictions: Sequence[str]) -> Dict[str, float]:
  """seqio-style metric: ``{"exact_match": fraction}``; strings compared after ``strip()``."""
  scores = _match_scores(targets, predictions, str.strip)
  return {"exact_match": sum(scores) / len(scores)}


def normalized_exact_match(targets: Sequence[AnswerSet],
                           predictions: Sequence[str]) -> Dict[str, float]:
  """seqio-style metric: ``{"normalized_exact_match": fraction}`` after :func:`squad_normalize`."""
  scores = _match_scores(targets, predictions, squad_normalize)
  return {"normalized_exact_match": sum(scores) / len(scores)}
