"""A task's seqio metric functions applied to its predictions, as seqio's evaluator does.

Targets are ``postprocess_fn(target_text, example=..., is_target=True)``, predictions
``postprocess_fn(generated_text, example=..., is_target=False)``; then every metric function is
called once on the whole split (CIDEr and mAP are corpus-level): ``fn(targets, predictions)``,
``fn(targets, predictions, aux_values)`` (see :mod:`palix.eval.aux_metrics` for the aux values)
or ``fn(targets, scores)`` (the log-likelihood of each target). It imports no seqio: palix's
feature converter is not a seqio one, so ``seqio.Evaluator`` cannot run over palix's predictions;
this is its metric step.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Sequence

from palix.eval.aux_metrics import ZeroShotClassification
from palix.eval.task_predictions import ExamplePrediction


@dataclasses.dataclass
class ScoredTask:
  """The metrics of one task and the postprocessed targets/predictions they came from."""
  metrics: Dict[str, Any]
  targets: List[Any]
  predictions: List[Any]


def metric_name(fn: Callable) -> str:
  inner = getattr(fn, "func", fn)  # functools.partial
  return getattr(inner, "__name__", type(inner).__name__)


def class_texts_of(metric_fns: Sequence[Callable]) -> List[tuple]:
  """The class texts every zero-shot metric of a task needs scored."""
  return [fn.class_texts for fn in metric_fns if isinstance(fn, ZeroShotClassification)]


def aux_values(predictions: Sequence[ExamplePrediction]) -> Dict[str, Any]:
  """seqio's ``aux_values``: one entry per example under each key."""
  tables = {}
  for texts in (predictions[0].class_scores if predictions else {}):
    tables[texts] = [p.class_scores[texts] for p in predictions]
  return {"output_ids": [p.output_ids for p in predictions],
          "logprobs": [p.logprobs for p in predictions],
          "pieces": [p.pieces for p in predictions],
          "scores": [p.score for p in predictions],
          "class_scores": tables}


def _merge(metrics: Dict[str, Any], new: Any, task_name: str, fn: Callable) -> None:
  if not isinstance(new, dict):
    raise ValueError(f"task {task_name!r}: metric function {metric_name(fn)} returned "
                     f"{type(new).__name__}, expected a dict of metric values")
  clash = sorted(set(new) & set(metrics))
  if clash:
    raise ValueError(f"task {task_name!r}: metric function {metric_name(fn)} returns {clash}, "
                     "which another metric function of the task already returned")
  metrics.update(new)


def _call(fn: Callable, task_name: str, *args):
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except  # re-raised with the task named
    e.add_note(f"(while computing metric {metric_name(fn)} of task {task_name!r})")
    raise


def score_task(task, predictions: Sequence[ExamplePrediction]) -> ScoredTask:
  """Runs the task's metric functions on ``predictions`` (``task``: an ``EvalTask``)."""
  if not predictions:
    raise ValueError(f"task {task.name!r}: no examples were evaluated")
  postprocess = task.postprocess_fn
  targets = [postprocess(p.example["targets"], example=p.example, is_target=True)
             for p in predictions]
  outputs = [postprocess(p.text, example=p.example, is_target=False) for p in predictions]
  metrics: Dict[str, Any] = {}
  for fn in task.predict_metric_fns:
    _merge(metrics, _call(fn, task.name, targets, outputs), task.name, fn)
  if task.predict_with_aux_metric_fns:
    aux = aux_values(predictions)
    for fn in task.predict_with_aux_metric_fns:
      _merge(metrics, _call(fn, task.name, targets, outputs, aux), task.name, fn)
  for fn in task.score_metric_fns:
    scores = [p.target_score for p in predictions]
    _merge(metrics, _call(fn, task.name, targets, scores), task.name, fn)
  metrics["num_examples"] = len(predictions)
  return ScoredTask(metrics=metrics, targets=targets, predictions=outputs)
