"""COCO box mAP of generated detections, computed by pycocotools' ``COCOeval``.

Targets and predictions use normalised ``(ymin, xmin, ymax, xmax)`` boxes (the location-token
convention). Both are scaled to the **original image size** given with each target (``image_size
= (height, width)``) and written as COCO ``[x, y, w, h]`` pixel boxes; the normalised coordinates
are taken relative to the whole image, i.e. the model input was resized, not padded.

Scores: pass :class:`~palix.eval.metrics.detection_parsing.ScoredDetection` lists (per-box
log-probabilities from :func:`~palix.eval.metrics.detection_parsing.parse_scored_detections`). Plain
generated text is accepted too, but then every box scores 1.0, and COCOeval's stable sort ranks
equal scores by their order in the output, which is not a confidence; the result counts them in
``num_unscored_detections`` and a warning is issued.

A detection whose label is not one of the categories cannot be evaluated by COCO and is counted in
``num_unknown_label_detections`` (not silently dropped). Values are fractions as pycocotools
returns them; a value pycocotools marks undefined (-1, e.g. no ground-truth box of that size) is
returned as NaN.
"""

import contextlib
import io
import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from palix import loc_tokens
from palix.eval.metrics.detection_parsing import ScoredDetection

# A prediction: generated text, or scored detections.
DetectionPrediction = Union[str, Sequence[ScoredDetection]]
_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large",
               "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")


def normalized_to_coco_box(box: Sequence[float], height: float, width: float) -> List[float]:
  """``(ymin, xmin, ymax, xmax)`` in [0, 1] -> COCO ``[x, y, w, h]`` in pixels."""
  ymin, xmin, ymax, xmax = (float(c) for c in box)
  return [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height]


def _check_target(index: int, target: Mapping[str, Any]):
  if not isinstance(target, Mapping):
    raise ValueError(f"detection target {index} must be a mapping with 'boxes', 'labels' and "
                     f"'image_size'; got {type(target).__name__}")
  missing = {"boxes", "labels", "image_size"} - set(target)
  if missing:
    raise ValueError(f"detection target {index} lacks {sorted(missing)}; keys {sorted(target)}")
  boxes = np.asarray(target["boxes"], np.float64)
  if boxes.size == 0:
    boxes = np.zeros((0, 4))
  elif boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"detection target {index}: boxes must have shape [N, 4]; got {boxes.shape}")
  labels = list(target["labels"])
  if len(labels) != len(boxes):
    raise ValueError(f"detection target {index}: {len(boxes)} boxes but {len(labels)} labels")
  if (boxes < 0).any() or (boxes > 1).any() or (boxes[:, 0] > boxes[:, 2]).any() \
      or (boxes[:, 1] > boxes[:, 3]).any():
    raise ValueError(f"detection target {index}: boxes must be normalised (ymin, xmin, ymax, "
                     f"xmax) in [0, 1] with min <= max; got {boxes.tolist()}")
  size = tuple(target["image_size"])
  if len(size) != 2 or min(size) <= 0:
    raise ValueError(f"detection target {index}: image_size must be (height, width) > 0; "
                     f"got {target['image_size']!r}")
  for key in ("iscrowd", "areas"):
    if key in target and len(target[key]) != len(boxes):
      raise ValueError(f"detection target {index}: {len(target[key])} '{key}' values for "
                       f"{len(boxes)} boxes")
  return boxes, labels, size


def _as_scored(index: int, prediction: DetectionPrediction, num_bins: int):
  if isinstance(prediction, str):
    return [ScoredDetection(d.box, d.label, 1.0)
            for d in loc_tokens.parse_detections(prediction, num_bins)], True
  detections = list(prediction)
  for d in detections:
    if not isinstance(d, ScoredDetection):
      raise ValueError(f"detection prediction {index} must be text or a list of "
                       f"ScoredDetection; found {type(d).__name__}")
  return detections, False


def coco_datasets(targets: Sequence[Mapping[str, Any]],
                  predictions: Sequence[DetectionPrediction], *,
                  label_names: Optional[Sequence[str]] = None,
                  num_bins: int = loc_tokens.NUM_BINS):
  """The COCO ground-truth dict, the result list and bookkeeping counts (image ``i`` has id
  ``i + 1``, category ``label_names[k]`` has id ``k + 1``)."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} detection targets but {len(predictions)} predictions")
  checked = [_check_target(i, t) for i, t in enumerate(targets)]
  if label_names is None:
    label_names = sorted({label for _, labels, _ in checked for label in labels})
  category_ids = {name: k + 1 for k, name in enumerate(label_names)}
  images, annotations, results = [], [], []
  counts = {"num_gt_boxes": 0, "num_detections": 0, "num_unknown_label_detections": 0,
            "num_unscored_detections": 0}
  for index, ((boxes, labels, (height, width)), target, prediction) in enumerate(
      zip(checked, targets, predictions)):
    image_id = index + 1
    images.append({"id": image_id, "height": height, "width": width})
    for k, (box, label) in enumerate(zip(boxes, labels)):
      if label not in category_ids:
        raise ValueError(f"detection target {index}: label {label!r} is not in label_names")
      coco_box = normalized_to_coco_box(box, height, width)
      area = float(target["areas"][k]) if "areas" in target else coco_box[2] * coco_box[3]
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": coco_box,
                          "category_id": category_ids[label], "area": area,
                          "iscrowd": int(target["iscrowd"][k]) if "iscrowd" in target else 0})
    detections, unscored = _as_scored(index, prediction, num_bins)
    for detection in detections:
      if detection.label not in category_ids:
        counts["num_unknown_label_detections"] += 1
        continue
      counts["num_detections"] += 1
      counts["num_unscored_detections"] += int(unscored)
      results.append({"image_id": image_id, "category_id": category_ids[detection.label],
                      "bbox": normalized_to_coco_box(detection.box, height, width),
                      "score": float(detection.score)})
  counts["num_gt_boxes"] = len(annotations)
  categories = [{"id": i, "name": name} for name, i in category_ids.items()]
  ground_truth = {"images": images, "annotations": annotations, "categories": categories}
  return ground_truth, results, counts


def coco_detection_map(targets: Sequence[Mapping[str, Any]],
                       predictions: Sequence[DetectionPrediction], *,
                       label_names: Optional[Sequence[str]] = None,
                       num_bins: int = loc_tokens.NUM_BINS) -> Dict[str, float]:
  """seqio-style metric: COCO ``mAP`` (AP@[.5:.95]), ``mAP_50``, ``mAP_75``, by size, ``AR_*``.

  Args:
    targets: per image ``{"boxes": [[ymin, xmin, ymax, xmax], ...] (normalised), "labels": [...],
      "image_size": (height, width)}`` with optional ``"iscrowd"`` and ``"areas"`` (COCO's
      segmentation areas, used for the small/medium/large split; default: box area in pixels).
    predictions: per image, scored detections or generated text (see the module docstring).
    label_names: the categories; default: every label that occurs in the targets.
  """
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  ground_truth, results, counts = coco_datasets(targets, predictions, label_names=label_names,
                                                num_bins=num_bins)
  if counts["num_unscored_detections"]:
    warnings.warn(f"{counts['num_unscored_detections']} detections came as text without scores; "
                  "they all score 1.0 and AP depends on their output order. Pass "
                  "ScoredDetection lists from parse_scored_detections instead.")
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the table
    coco_gt = COCO()
    coco_gt.dataset = ground_truth
    coco_gt.createIndex()
    if results:
      coco_dt = coco_gt.loadRes(results)
    else:  # loadRes cannot take an empty list; an empty result set scores AP 0
      coco_dt = COCO()
      coco_dt.dataset = {"images": list(ground_truth["images"]), "annotations": [],
                         "categories": list(ground_truth["categories"])}
      coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  metrics = {name: (math.nan if value == -1 else float(value))
             for name, value in zip(_STAT_NAMES, evaluator.stats)}
  metrics.update({name: float(value) for name, value in counts.items()})
  return metrics
