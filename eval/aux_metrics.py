"""seqio metric functions that need more than the generated text (seqio's ``aux_values``).

seqio sorts a task's ``metric_fns`` by their positional arguments; the ones here take
``(targets, predictions, aux_values)``. ``palix eval`` fills ``aux_values`` with one entry per
example, in order:

* ``output_ids``: the generated ids up to EOS; ``pieces``: each id as its SentencePiece piece;
  ``logprobs``: each id's log-probability from decoding (EOS and padding excluded);
* ``class_scores``: ``{class_texts: array [num_examples, num_classes]}`` of log-likelihoods, for
  every :class:`ZeroShotClassification` the task declares (scored with the model's
  ``score_batch``, see ``palix.eval.zero_shot``).
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from palix.eval import zero_shot
from palix.eval.metrics.detection import coco_detection_map
from palix.eval.metrics.detection_parsing import parse_scored_detections


def _aux(aux_values: Mapping[str, Any], key: str, count: int, who: str):
  if key not in aux_values:
    raise ValueError(f"{who} needs aux_values[{key!r}]; got keys {sorted(aux_values)}")
  values = aux_values[key]
  if len(values) != count:
    raise ValueError(f"{who}: aux_values[{key!r}] has {len(values)} entries for {count} examples")
  return values


def scored_detections(aux_values: Mapping[str, Any], count: int):
  """Per example, the detections parsed from its pieces, each scored by its tokens' logprobs."""
  pieces = _aux(aux_values, "pieces", count, "detection scoring")
  logprobs = _aux(aux_values, "logprobs", count, "detection scoring")
  return [parse_scored_detections(p, l) for p, l in zip(pieces, logprobs)]


def coco_map_from_token_scores(targets, predictions, aux_values, *,
                               label_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
  """COCO box mAP where every box is scored by the summed log-probabilities of its own tokens.

  ``targets`` are detection target dicts (``palix.eval.postprocessors.detection``);
  ``predictions`` the generated texts (only their count is used: boxes come from the pieces, so
  the score and the box always belong together). See
  ``palix.eval.metrics.detection_parsing`` for the scoring rule and ``coco_detection_map`` for
  the returned keys.
  """
  detections = scored_detections(aux_values, len(predictions))
  return coco_detection_map(targets, detections, label_names=label_names)


@dataclasses.dataclass(frozen=True)
class ZeroShotClassification:
  """Metric: classify each example by the most likely of ``class_texts`` (given its image and
  prompt) and compare with the class named by its target.

  The evaluator sees this type among a task's metric functions and scores every class text for
  every example into ``aux_values["class_scores"][class_texts]``. Ties go to the first class.

  Attributes:
    class_texts: one text per class, e.g. ``("a photo of a t-shirt", ...)``; every target must be
      one of them.
    metric_name: key of the accuracy in the result.
  """
  class_texts: Tuple[str, ...]
  metric_name: str = "zero_shot_accuracy"

  def __post_init__(self):
    if not self.class_texts or len(set(self.class_texts)) != len(self.class_texts):
      raise ValueError(f"class_texts must be distinct and non-empty; got {self.class_texts!r}")

  def labels(self, targets) -> np.ndarray:
    index = {text: k for k, text in enumerate(self.class_texts)}
    labels = []
    for i, target in enumerate(targets):
      text = target if isinstance(target, str) else next(iter(target), None)
      if text not in index:
        raise ValueError(f"zero-shot target {i} is {text!r}, which is not one of the "
                         f"{len(self.class_texts)} class texts {list(self.class_texts)}")
      labels.append(index[text])
    return np.asarray(labels, np.int64)

  def __call__(self, targets, predictions, aux_values):
    del predictions  # classification scores every class instead of generating
    tables = aux_values.get("class_scores", {})
    if self.class_texts not in tables:
      raise ValueError("ZeroShotClassification needs aux_values['class_scores'][class_texts] "
                       "(palix eval computes it)")
    table = np.asarray(tables[self.class_texts], np.float64)
    if not targets:
      raise ValueError("zero-shot accuracy needs at least one example")
    if table.shape != (len(targets), len(self.class_texts)):
      raise ValueError(f"class scores have shape {table.shape}; expected "
                       f"({len(targets)}, {len(self.class_texts)})")
    decided = zero_shot.decide(table, self.class_texts, self.labels(targets))
    return {self.metric_name: decided.accuracy}
