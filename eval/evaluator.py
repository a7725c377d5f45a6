"""The benchmark evaluator behind ``palix eval``: decode a task or mixture, score it, report it.

For each task of ``mixture_or_task_name`` (a mixture is evaluated task by task; rates do not
apply), the first ``max_examples`` examples of ``split`` are decoded in batches with the model's
``predict_batch_with_aux``, detokenized with the task's SentencePiece model, postprocessed and
scored by the metric functions the task declares (seqio ``metric_fns``; the built-ins declare
theirs in ``BUILTIN_TASKS``, ``tasks/registry.py``). Outputs in ``output_dir``:

* ``metrics.json`` / ``metrics.md``: ``{task: {metric: value, ..., num_examples}}``;
* ``report.html`` with ``images/``: the first ``num_report_samples`` examples of every task;
* ``predictions/<task>.jsonl``: every example's prompt, prediction, target, score and
  ``truncated`` (the answer filled the decoding length without EOS; also logged as a warning).

Nothing here imports TensorFlow; the data layer (``palix.tasks.eval_examples``) is imported when
an evaluation starts. Runs in one process (all its local devices, data parallel).
"""

import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional

import gin
import jax
import numpy as np

from palix import partitioning
from palix import tokenizer as tokenizer_lib
from palix.eval import report_samples
from palix.eval import task_scoring
from palix.eval import task_predictions
from palix.eval.report import ReportFiles, write_report
from palix.models import base as model_base
from palix.training import checkpoints  # gin-configurable: imported before gin locks its config

DEFAULT_OUTPUT_ROOT = "palix_eval"


@dataclasses.dataclass
class TaskResult:
  """One evaluated task: its ``EvalTask``, the per-example predictions and its metrics."""
  task: Any
  predictions: List[task_predictions.ExamplePrediction]
  scored: task_scoring.ScoredTask


@dataclasses.dataclass
class EvaluationOutput:
  metrics: Dict[str, Dict[str, Any]]
  report: ReportFiles
  prediction_files: Dict[str, str]
  output_dir: str


def evaluate_tasks(model, params, mixture_or_task_name: str, *, split: str,
                   task_feature_lengths: Mapping[str, int], batch_size: int,
                   num_images: int = 1, image_size: int = 224,
                   max_examples: Optional[int] = None,
                   decode_kwargs: Optional[Mapping[str, Any]] = None,
                   num_report_samples: int = 16,
                   partitioner: Optional[partitioning.Partitioner] = None,
                   overflow: str = "error", rng_seed: Optional[int] = None,
                   progress: bool = True,
                   feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]] = None,
                   image_size_by_task: Optional[Mapping[str, int]] = None
                   ) -> Dict[str, TaskResult]:
  """Decodes and scores every task of ``mixture_or_task_name``; returns ``{task: TaskResult}``.

  Args:
    model, params: a ``palix.models.base.BaseModel`` and its parameters.
    mixture_or_task_name: a registered palix task or mixture.
    split: the split every task is evaluated on (e.g. ``test``).
    task_feature_lengths: ``{'inputs': Le, 'targets': Ld}``; ``Ld`` is also the decoding length.
    batch_size: rows per decoding batch (predictions do not depend on it).
    num_images, image_size: the batch geometry (``NUM_IMAGES``, ``IMAGE_SIZE``); each task is
      decoded with its own image count when its source fixes one (``palix.tasks.geometry``;
      masked image slots do not change predictions, they only cost compute).
    max_examples: evaluate the first ``max_examples`` examples of each task (default: all).
    decode_kwargs: for ``predict_batch_with_aux`` (e.g. ``{'decode_fn': beam_search,
      'beam_size': 4}``).
    num_report_samples: examples per task that keep their images for the report.
    partitioner: lays out the batch (default: data parallel over the local devices).
    overflow: ``error`` or ``truncate`` for over-long prompts/targets (see ``get_batches``).
    rng_seed: RNG for sampling decoders (see ``task_predictions.predict_task``).
    progress: show a tqdm progress bar per task.
    feature_lengths_by_task: ``{task: {'inputs': ..., 'targets': ...}}`` for tasks that need
      less than ``task_feature_lengths`` (its ``targets`` is that task's decoding length).
    image_size_by_task: ``{task: S}`` for tasks trained at another resolution than
      ``image_size`` (``palix.tasks.geometry``).
  """
  from palix.tasks import eval_examples  # pylint: disable=g-import-not-at-top  # TF
  from palix.tasks import geometry as geometry_lib  # pylint: disable=g-import-not-at-top
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be >= 1 or None; got {max_examples}")
  partitioner = partitioner or partitioning.Partitioner()
  layout = partitioner.data_layout(batch_size)
  geometry_lib.check_lengths_by_task(feature_lengths_by_task, task_feature_lengths)
  geometry_lib.check_image_sizes(image_size_by_task)
  results: Dict[str, TaskResult] = {}
  for task in eval_examples.leaf_tasks(mixture_or_task_name, split):
    geometry = geometry_lib.task_geometry(task.name, num_images=num_images,
                                          feature_lengths=task_feature_lengths,
                                          feature_lengths_by_task=feature_lengths_by_task,
                                          image_size_by_task=image_size_by_task)
    all_fns = (task.predict_metric_fns + task.predict_with_aux_metric_fns
               + task.score_metric_fns)
    if not all_fns:
      logging.warning("task %r declares no metric functions: its predictions are written and "
                      "reported, its metrics are only num_examples", task.name)
    batches = eval_examples.evaluation_batches(
        task.name, split=split, batch_size=layout.local_batch_size,
        feature_lengths=geometry.feature_lengths, num_images=geometry.num_images,
        image_size=geometry.image_size or image_size, max_examples=max_examples, overflow=overflow,
        keep_media=num_report_samples)
    total = task.num_examples if max_examples is None else min(task.num_examples, max_examples)
    predictions = task_predictions.predict_task(
        model, params, batches, tokenizer=tokenizer_lib.get_tokenizer(task.vocabulary_path),
        partitioner=partitioner, layout=layout,
        target_length=geometry.feature_lengths["targets"],
        decode_kwargs=decode_kwargs, class_texts=task_scoring.class_texts_of(all_fns),
        score_targets=bool(task.score_metric_fns), keep_model_images=num_report_samples,
        rng_seed=rng_seed, total=total, description=task.name, progress=progress)
    _warn_truncated(task.name, predictions, geometry.feature_lengths["targets"])
    results[task.name] = TaskResult(task, predictions,
                                    task_scoring.score_task(task, predictions))
  return results


def _warn_truncated(task_name: str, predictions, length: int) -> None:
  cut = [p for p in predictions if p.truncated]
  if cut:
    logging.warning("task %r: %d of %d answers filled the decoding length %d without EOS and may "
                    "be cut short (first: %s); raise the task's 'targets' length "
                    "(TASK_FEATURE_LENGTHS or FEATURE_LENGTHS_BY_TASK). Their predictions have "
                    "truncated: true", task_name, len(cut), len(predictions), length,
                    cut[0].example["record_id"])


def _prediction_record(prediction: task_predictions.ExamplePrediction) -> Dict[str, Any]:
  example = prediction.example
  record = {"index": example["index"], "record_id": example["record_id"],
            "prompt": example["inputs"], "prediction": prediction.text,
            "target": example["targets"], "score": prediction.score,
            "output_ids": prediction.output_ids, "truncated": prediction.truncated}
  for texts, scores in prediction.class_scores.items():
    record.setdefault("class_scores", []).append(
        {"best": texts[int(np.argmax(scores))], "scores": dict(zip(texts, scores.tolist()))})
  if prediction.target_score is not None:
    record["target_score"] = prediction.target_score
  return record


def write_outputs(output_dir: str, results: Mapping[str, TaskResult], *, title: str,
                  description: str = "", num_report_samples: int = 16):
  """Predictions JSONL per task, then ``write_report`` (metrics.json/.md, report.html)."""
  os.makedirs(os.path.join(output_dir, "predictions"), exist_ok=True)
  prediction_files, samples = {}, []
  for name, result in results.items():
    path = os.path.join(output_dir, "predictions", f"{name}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      for prediction in result.predictions:
        f.write(json.dumps(_prediction_record(prediction)) + "\n")
    prediction_files[name] = path
    fns = (result.task.predict_metric_fns + result.task.predict_with_aux_metric_fns
           + result.task.score_metric_fns)
    shown = zip(result.predictions, result.scored.targets, result.scored.predictions)
    for k, (prediction, target, output) in enumerate(shown):
      if k >= num_report_samples:
        break
      samples.append(report_samples.report_sample(name, prediction, target, output, fns))
  metrics = {name: result.scored.metrics for name, result in results.items()}
  report = write_report(output_dir, metrics=metrics, samples=samples, title=title,
                        description=description)
  return report, prediction_files


def default_output_dir(mixture_or_task_name: str, split: str) -> str:
  """``./palix_eval/<name>-<split>``: where a run without ``output_dir`` writes."""
  return os.path.join(os.getcwd(), DEFAULT_OUTPUT_ROOT, f"{mixture_or_task_name}-{split}")


@gin.configurable
def evaluate(*, model=gin.REQUIRED, checkpoint_path: str = gin.REQUIRED,
             mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             output_dir: Optional[str] = None, split: str = "test", batch_size: int = 32,
             num_images: int = 1, image_size: int = 224, max_examples: Optional[int] = None,
             decode_kwargs: Optional[Mapping[str, Any]] = None, num_report_samples: int = 16,
             partitioner: Optional[partitioning.Partitioner] = None, overflow: str = "error",
             rng_seed: Optional[int] = None, progress: bool = True,
             feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]] = None,
             image_size_by_task: Optional[Mapping[str, int]] = None) -> EvaluationOutput:
  """Loads ``checkpoint_path`` into ``model`` and evaluates it (see the module docstring).

  ``checkpoint_path`` is anything ``palix.training.checkpoints.load_params`` accepts: a training
  run's folder, its ``checkpoints`` folder (latest step), one step, or a params-only checkpoint
  (``palix convert``). ``output_dir`` defaults to :func:`default_output_dir`. The other
  arguments are those of :func:`evaluate_tasks`.
  """
  if jax.process_count() > 1:
    raise ValueError(f"palix eval runs in one process (this job has {jax.process_count()}); "
                     "it gathers every prediction to score corpus-level metrics")
  # Tasks decode up to their own 'targets' length, so only the prompt length must fit the model.
  model.check_feature_lengths({"inputs": task_feature_lengths["inputs"]})
  partitioner = partitioner or partitioning.Partitioner()
  shapes = model_base.batch_shapes(batch_size, num_images=num_images, image_size=image_size,
                                   feature_lengths=task_feature_lengths)
  params = checkpoints.load_model_params(model, checkpoint_path, partitioner, shapes,
                                         model_base.batch_dtypes())
  results = evaluate_tasks(
      model, params, mixture_or_task_name, split=split, task_feature_lengths=task_feature_lengths,
      batch_size=batch_size, num_images=num_images, image_size=image_size,
      max_examples=max_examples, decode_kwargs=decode_kwargs,
      num_report_samples=num_report_samples, partitioner=partitioner, overflow=overflow,
      rng_seed=rng_seed, progress=progress, feature_lengths_by_task=feature_lengths_by_task,
      image_size_by_task=image_size_by_task)
  output_dir = output_dir or default_output_dir(mixture_or_task_name, split)
  limit = "all examples" if max_examples is None else f"first {max_examples} examples per task"
  report, files = write_outputs(
      output_dir, results, title=f"{mixture_or_task_name} ({split})",
      description=f"checkpoint {checkpoint_path}; {limit}", num_report_samples=num_report_samples)
  metrics = {name: result.scored.metrics for name, result in results.items()}
  return EvaluationOutput(metrics, report, files, output_dir)
