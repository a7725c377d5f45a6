"""COCO mAP of generated detections equals a direct pycocotools run on the same boxes and scores."""

import contextlib
import io
import math
import re
import warnings

import numpy as np
import pytest

from palix import loc_tokens
from palix.eval.metrics import ScoredDetection, coco_detection_map

LABELS = ["cat", "dog", "person"]
IMAGE_SIZES = [(480, 640), (300, 400), (200, 200), (375, 500)]  # (height, width)


def _fixture():
  """Ground truth and scored detections in *pixels* (x, y, w, h), with noise, misses, false
  positives, an image without objects and a crowd box."""
  rng = np.random.default_rng(0)
  gt, dt = [], []
  for image, (height, width) in enumerate(IMAGE_SIZES):
    n = 0 if image == 2 else int(rng.integers(2, 6))
    for _ in range(n):
      w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
      x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
      label = LABELS[int(rng.integers(0, 3))]
      gt.append((image, label, [x, y, w, h]))
      if rng.uniform() < 0.8:  # detected, with jitter
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        bx, by = np.clip([x + jitter[0], y + jitter[1]], 0, [width - 2, height - 2])
        bw = min(max(w + jitter[2], 1.0), width - bx)
        bh = min(max(h + jitter[3], 1.0), height - by)
        dt.append((image, label, [bx, by, bw, bh], float(rng.uniform(-3, 0))))
    for _ in range(2):  # false positives, also on the empty image
      w, h = 0.2 * width, 0.2 * height
      x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
      dt.append((image, LABELS[int(rng.integers(0, 3))], [x, y, w, h], float(rng.uniform(-6, -1))))
  return gt, dt


def _normalized(box, height, width):
  x, y, w, h = box
  return (y / height, x / width, (y + h) / height, (x + w) / width)


def _pycocotools_stats(gt, dt, crowd=()):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  dataset = {
      "images": [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(IMAGE_SIZES)],
      "categories": [{"id": k + 1, "name": n} for k, n in enumerate(LABELS)],
      "annotations": [{"id": j + 1, "image_id": i + 1, "category_id": LABELS.index(label) + 1,
                       "bbox": box, "area": box[2] * box[3], "iscrowd": int(j in crowd)}
                      for j, (i, label, box) in enumerate(gt)],
  }
  results = [{"image_id": i + 1, "category_id": LABELS.index(label) + 1, "bbox": box,
              "score": score} for i, label, box, score in dt]
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats


def _targets(gt, crowd=()):
  targets = [{"boxes": [], "labels": [], "image_size": size, "iscrowd": []} for size in IMAGE_SIZES]
  for j, (image, label, box) in enumerate(gt):
    targets[image]["boxes"].append(_normalized(box, *IMAGE_SIZES[image]))
    targets[image]["labels"].append(label)
    targets[image]["iscrowd"].append(int(j in crowd))
  return targets


def _predictions(dt):
  predictions = [[] for _ in IMAGE_SIZES]
  for image, label, box, score in dt:
    predictions[image].append(ScoredDetection(_normalized(box, *IMAGE_SIZES[image]), label, score))
  return predictions


def _assert_stats_equal(metrics, stats):
  names = ["mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large",
           "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large"]
  for name, value in zip(names, stats):
    if value == -1:
      assert math.isnan(metrics[name]), name
    else:
      assert metrics[name] == pytest.approx(value, abs=1e-9), name


def test_map_equals_direct_pycocotools():
  gt, dt = _fixture()
  stats = _pycocotools_stats(gt, dt, crowd={1})
  assert 0.2 < stats[0] < 0.95  # a non-trivial fixture
  metrics = coco_detection_map(_targets(gt, crowd={1}), _predictions(dt), label_names=LABELS)
  _assert_stats_equal(metrics, stats)
  assert metrics["num_gt_boxes"] == len(gt) and metrics["num_detections"] == len(dt)


def test_scores_decide_the_ranking():
  # Reversing the scores changes AP (so scores really reach COCOeval).
  gt, dt = _fixture()
  flipped = [(i, label, box, -score) for i, label, box, score in dt]
  metrics = coco_detection_map(_targets(gt), _predictions(flipped), label_names=LABELS)
  _assert_stats_equal(metrics, _pycocotools_stats(gt, flipped))
  assert metrics["mAP"] != pytest.approx(coco_detection_map(_targets(gt), _predictions(dt),
                                                            label_names=LABELS)["mAP"])


def test_text_predictions_are_rescaled_and_scored_one():
  # Generated text: boxes are rescaled from location bins to each image's pixels.
  gt, dt = _fixture()
  texts, dt_binned = [], []
  for image, (height, width) in enumerate(IMAGE_SIZES):
    pieces = []
    for i, label, box, _ in dt:
      if i != image:
        continue
      normalized = np.clip(_normalized(box, height, width), 0, 1)
      pieces.append(f"{loc_tokens.box_to_text(normalized)} {label}")
      bins = np.round(normalized * 1023) / 1023  # what the decoder will read back
      ymin, xmin, ymax, xmax = bins
      dt_binned.append((image, label, [xmin * width, ymin * height, (xmax - xmin) * width,
                                       (ymax - ymin) * height], 1.0))
    texts.append(" ; ".join(pieces))
  with pytest.warns(UserWarning, match="without scores"):
    metrics = coco_detection_map(_targets(gt), texts, label_names=LABELS)
  _assert_stats_equal(metrics, _pycocotools_stats(gt, dt_binned))
  assert metrics["num_unscored_detections"] == len(dt)


def test_unknown_labels_are_counted_not_evaluated():
  gt, dt = _fixture()
  predictions = _predictions(dt)
  predictions[0].append(ScoredDetection((0.1, 0.1, 0.5, 0.5), "unicorn", -0.1))
  metrics = coco_detection_map(_targets(gt), predictions, label_names=LABELS)
  assert metrics["num_unknown_label_detections"] == 1
  _assert_stats_equal(metrics, _pycocotools_stats(gt, dt))


def test_no_detections_scores_zero():
  gt, _ = _fixture()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    metrics = coco_detection_map(_targets(gt), [[] for _ in IMAGE_SIZES], label_names=LABELS)
  # every category has ground truth and nothing was found: AP 0 and recall 0 (not undefined)
  assert metrics["mAP"] == 0.0 and metrics["mAP_50"] == 0.0 and metrics["AR_100"] == 0.0


def test_one_perfect_box():
  # A single exact detection: AP = 1 at every IoU threshold (hand-checkable end to end).
  targets = [{"boxes": [(0.25, 0.5, 0.75, 1.0)], "labels": ["cat"], "image_size": (100, 200)}]
  text = "<loc0256><loc0512><loc0767><loc1023> cat"  # bins of 0.25/0.5/0.75/1.0, off < 1/2046
  metrics = coco_detection_map(targets, [[ScoredDetection(d.box, d.label, -0.5) for d in
                                          loc_tokens.parse_detections(text)]])
  assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAP_50"] == pytest.approx(1.0)
  assert math.isnan(metrics["mAP_small"])  # 100x50 px box is medium: no small GT -> undefined


@pytest.mark.parametrize("target,message", [
    ({"boxes": [(0, 0, 1, 1)], "labels": ["cat"]}, "lacks ['image_size']"),
    ({"boxes": [(0, 0, 1)], "labels": ["cat"], "image_size": (10, 10)}, "shape [N, 4]"),
    ({"boxes": [(0, 0, 1, 1)], "labels": [], "image_size": (10, 10)}, "1 boxes but 0 labels"),
    ({"boxes": [(0, 0, 10, 10)], "labels": ["cat"], "image_size": (10, 10)}, "normalised"),
    ({"boxes": [(0.5, 0, 0.2, 1)], "labels": ["cat"], "image_size": (10, 10)}, "min <= max"),
    ({"boxes": [(0, 0, 1, 1)], "labels": ["cat"], "image_size": (10,)}, "(height, width)"),
    ({"boxes": [(0, 0, 1, 1)], "labels": ["cow"], "image_size": (10, 10)}, "'cow' is not in"),
    ("<loc0001> cat", "must be a mapping"),
])
def test_bad_targets(target, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    coco_detection_map([target], [[]], label_names=["cat"])


def test_bad_predictions():
  target = {"boxes": [(0, 0, 1, 1)], "labels": ["cat"], "image_size": (10, 10)}
  with pytest.raises(ValueError, match="1 detection targets but 2 predictions"):
    coco_detection_map([target], [[], []])
  with pytest.raises(ValueError, match="text or a list of ScoredDetection"):
    coco_detection_map([target], [[((0, 0, 1, 1), "cat")]])
