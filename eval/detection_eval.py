"""Open-vocabulary detection metrics of an OWL detector: COCO mAP (pycocotools) on a box task.

Every image of the split is queried with *every* class name of the task (LVIS-style: the detector
never knows which classes are present), and its ``num_detections`` best (token, query) pairs by
score are its detections. COCO mAP comes from ``palix.eval.metrics.detection.coco_detection_map``
(pycocotools' ``COCOeval``). Scores are ``sigmoid(logit)`` of each (token, query) pair: they do
not compete across queries, so the detections of one class are the same whether or not other
classes are queried.

Class groups (a task's ``class_groups``, e.g. ``shapes_detection``'s seen and unseen classes)
add mAP per group: ground truth and detections restricted to the group's classes, every image
kept (a detection of a group class on an image without one is a false positive). Outputs in
``output_dir``: ``metrics.json`` and ``metrics.md`` (``{'all': ..., group: ...}``),
``report.html`` (predicted and true boxes drawn) and ``predictions/<task>.jsonl``.

``palix eval`` runs :func:`evaluate_detector` with ``gin/runs/eval_detection.gin``.

Nothing here imports TensorFlow at import time; the task's images come from
``palix.tasks.box_tasks`` when an evaluation starts.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import gin
import numpy as np
import tqdm

from palix.eval import evaluator
from palix.eval.metrics.detection import coco_detection_map
from palix.eval.metrics.detection_parsing import ScoredDetection
from palix.eval.report import ReportFiles, ReportSample, write_report
from palix.query_tokens import QueryTokenizer


@dataclasses.dataclass
class DetectionEvaluation:
  """``metrics`` (``{'all': {...}, group: {...}}``), per-image detections and the files written
  (the fields ``palix eval`` prints, as for ``palix.eval.evaluator.EvaluationOutput``)."""
  metrics: Dict[str, Dict[str, float]]
  detections: List[List[ScoredDetection]]
  output_dir: Optional[str] = None
  report: Optional[ReportFiles] = None
  prediction_files: Dict[str, str] = dataclasses.field(default_factory=dict)


def detect_images(model, params, images: np.ndarray, queries: Sequence[str], *,
                  tokenizer: QueryTokenizer, batch_size: int = 32,
                  num_detections: int = 100) -> List[List[ScoredDetection]]:
  """The ``num_detections`` best detections of each image (float ``[N, S, S, 3]`` in [-1, 1])
  for the text ``queries`` (yxyx boxes, labels are the query texts, scores in [0, 1])."""
  tokens = tokenizer.encode(queries, model.max_queries, pad_to=model.max_queries)[None]
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    rows = len(chunk)
    if rows < batch_size:  # one compiled shape for the whole split
      chunk = np.concatenate([chunk, np.zeros((batch_size - rows,) + chunk.shape[1:],
                                              chunk.dtype)])
    boxes, aux = model.predict_batch_with_aux(
        params, {"images": chunk, "query_tokens": np.repeat(tokens, batch_size, axis=0)},
        num_detections=num_detections)
    boxes, scores, labels = (np.asarray(x) for x in (boxes, aux["scores"], aux["labels"]))
    for r in range(rows):
      out.append([ScoredDetection(tuple(float(c) for c in np.clip(boxes[r, k], 0.0, 1.0)),
                                  queries[int(labels[r, k])], float(scores[r, k]))
                  for k in range(boxes.shape[1]) if int(labels[r, k]) < len(queries)])
  return out


def detection_metrics(targets: Sequence[Mapping[str, Any]],
                      detections: Sequence[Sequence[ScoredDetection]],
                      label_names: Sequence[str],
                      class_groups: Optional[Mapping[str, Sequence[str]]] = None
                      ) -> Dict[str, Dict[str, float]]:
  """COCO metrics over all classes (``'all'``) and over each group of classes."""
  metrics = {"all": coco_detection_map(targets, detections, label_names=list(label_names))}
  for group, names in (class_groups or {}).items():
    names = [n for n in label_names if n in set(names)]
    keep = set(names)
    group_targets = []
    for t in targets:
      index = [k for k, label in enumerate(t["labels"]) if label in keep]
      group_targets.append({"boxes": np.asarray(t["boxes"]).reshape(-1, 4)[index],
                            "labels": [t["labels"][k] for k in index],
                            "image_size": t["image_size"]})
    group_detections = [[d for d in ds if d.label in keep] for ds in detections]
    metrics[group] = coco_detection_map(group_targets, group_detections, label_names=names)
  return metrics


def _report_sample(example, image, detections, threshold: float, max_boxes: int):
  shown = [d for d in detections if d.score >= threshold][:max_boxes]
  return ReportSample(
      image=image, title=example.record_id,
      prompt="", prediction="; ".join(f"{d.label} {d.score:.2f}" for d in shown),
      target="; ".join(example.labels), predicted_boxes=shown,
      target_boxes=[{"box": b, "label": label} for b, label in zip(example.boxes.tolist(),
                                                                    example.labels)])


@gin.configurable
def evaluate_detector(*, model=gin.REQUIRED, checkpoint_path: Optional[str] = None,
                      params=None, task_name: str = gin.REQUIRED, split: str = "test",
                      queries: Optional[Sequence[str]] = None,
                      class_groups: Optional[Mapping[str, Sequence[str]]] = None,
                      max_examples: Optional[int] = None, batch_size: int = 32,
                      num_detections: int = 100, output_dir: Optional[str] = None,
                      num_report_samples: int = 16, report_score_threshold: float = 0.3,
                      vocabulary_path: Optional[str] = None,
                      progress: bool = True) -> DetectionEvaluation:
  """COCO mAP of ``model`` on ``task_name``'s ``split`` (see the module docstring).

  Args:
    model: an ``OwlModel``; ``checkpoint_path`` (anything ``load_params`` reads) or ``params``.
    task_name: a task of ``palix.tasks.box_tasks``.
    queries: the text queries (default: every class name of the split).
    class_groups: ``{group: class names}`` scored separately (default: the task's own
      ``class_groups``; ``{}`` for none).
    max_examples: the first ``max_examples`` images (default all).
    output_dir: where metrics, report and predictions go (default
      ``./palix_eval/<task>-<split>``, as ``palix eval``).
    num_report_samples, report_score_threshold: report cards, and the score from which a
      detection is drawn on them (at most 10 per image).
  """
  # pylint: disable=g-import-not-at-top  # TensorFlow (data layer) and Orbax only when used
  from palix.tasks import box_batches
  from palix.tasks import box_tasks
  if params is None:
    if checkpoint_path is None:
      raise ValueError("evaluate_detector needs checkpoint_path or params")
    from palix import partitioning
    from palix.training import checkpoints
    shapes = model.input_shapes(batch_size)
    params = checkpoints.load_model_params(model, checkpoint_path, partitioning.Partitioner(),
                                           shapes, {k: np.float32 if k == "images" else np.int32
                                                    for k in shapes})
  task = box_tasks.get_box_task(task_name)
  source = task.source
  class_groups = task.class_groups if class_groups is None else class_groups
  label_names = list(source.class_names(split))
  queries = list(queries or label_names)
  count = source.num_examples(split)
  count = count if max_examples is None else min(count, max_examples)
  tokenizer = QueryTokenizer(model.max_query_len, vocabulary_path)
  examples, images = [], []
  for index in tqdm.trange(count, desc=f"{task_name}:{split}", disable=not progress):
    example = source.example(split, index)
    examples.append(example)
    images.append(box_batches.resize(example.image, model.image_size))
  pixels = np.stack(images).astype(np.float32) / 127.5 - 1.0
  detections = detect_images(model, params, pixels, queries, tokenizer=tokenizer,
                             batch_size=batch_size, num_detections=num_detections)
  targets = [{"boxes": e.boxes, "labels": list(e.labels), "image_size": e.image.shape[:2]}
             for e in examples]
  metrics = detection_metrics(targets, detections, sorted(set(label_names) | set(queries)),
                              class_groups)
  output_dir = output_dir or evaluator.default_output_dir(task_name, split)
  prediction_file = os.path.join(output_dir, "predictions", f"{task_name}.jsonl")
  os.makedirs(os.path.dirname(prediction_file), exist_ok=True)
  with open(prediction_file, "w", encoding="utf-8") as f:
    for example, found in zip(examples, detections):
      f.write(json.dumps({"record_id": example.record_id, "labels": list(example.labels),
                          "boxes": example.boxes.tolist(),
                          "detections": [d._asdict() for d in found[:20]]}) + "\n")
  samples = [_report_sample(e, img, d, report_score_threshold, 10)
             for e, img, d in list(zip(examples, images, detections))[:num_report_samples]]
  where = checkpoint_path or "given parameters"
  report = write_report(output_dir, metrics=metrics, samples=samples,
                        title=f"{task_name} ({split}) detection",
                        description=f"{where}; {count} images; queries: {', '.join(queries)}")
  return DetectionEvaluation(metrics, detections, output_dir, report,
                             {task_name: prediction_file})
