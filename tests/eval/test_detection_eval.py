"""Detection metrics by class group, and the detector evaluation end to end (report, files)."""

import json
import os

import gin
import numpy as np
import pytest

from palix.cli import main as cli_main
from palix.eval import detection_eval
from palix.eval.metrics.detection_parsing import ScoredDetection
from palix.tasks import box_tasks
from tests import owl_tiny

TARGETS = [{"boxes": [[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]], "labels": ["bag", "coat"],
            "image_size": (100, 100)},
           {"boxes": [[0.2, 0.2, 0.6, 0.6]], "labels": ["bag"], "image_size": (100, 100)}]
NAMES = ["bag", "coat"]


def test_groups_restrict_ground_truth_and_detections():
  perfect = [[ScoredDetection((0.1, 0.1, 0.4, 0.4), "bag", 0.9),
              ScoredDetection((0.5, 0.5, 0.9, 0.9), "coat", 0.8)],
             [ScoredDetection((0.2, 0.2, 0.6, 0.6), "bag", 0.7)]]
  metrics = detection_eval.detection_metrics(TARGETS, perfect, NAMES,
                                             {"seen": ["bag"], "unseen": ["coat"]})
  for group in ("all", "seen", "unseen"):
    assert metrics[group]["mAP_50"] == pytest.approx(1.0), group
  assert metrics["seen"]["num_gt_boxes"] == 2 and metrics["unseen"]["num_gt_boxes"] == 1
  # 'coat' boxes in the wrong places: unseen AP drops to 0, seen AP does not move
  wrong = [[perfect[0][0], ScoredDetection((0.0, 0.0, 0.05, 0.05), "coat", 0.99)],
           [perfect[1][0], ScoredDetection((0.7, 0.0, 0.9, 0.1), "coat", 0.95)]]
  metrics = detection_eval.detection_metrics(TARGETS, wrong, NAMES,
                                             {"seen": ["bag"], "unseen": ["coat"]})
  assert metrics["unseen"]["mAP_50"] == 0.0 and metrics["seen"]["mAP_50"] == pytest.approx(1.0)
  assert metrics["all"]["mAP_50"] == pytest.approx(0.5)


class Squares(box_tasks.BoxSource):
  def num_examples(self, split):
    return 3

  def example(self, split, index):
    image = np.full((32, 32, 3), 230, np.uint8)
    image[4:20, 8:24] = 30
    return box_tasks.BoxExample(image, np.array([[4 / 32, 8 / 32, 20 / 32, 24 / 32]],
                                                np.float32), (NAMES[index % 2],),
                                f"squares:{split}[{index}]")

  def class_names(self, split):
    return tuple(NAMES)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  box_tasks.add_box_task("test_squares", Squares(), replace=True,
                         class_groups={"seen": ["bag"], "unseen": ["coat"]})
  folder = tmp_path_factory.mktemp("tiny_owl")
  return folder, owl_tiny.model(), owl_tiny.save(folder, shift=0.0)


def test_evaluate_detector_writes_metrics_report_and_predictions(tiny):
  folder, model, params = tiny
  out = str(folder / "eval")
  result = detection_eval.evaluate_detector(
      model=model, params=params, task_name="test_squares", split="test", batch_size=2,
      num_detections=5, output_dir=out, report_score_threshold=0.0, progress=False)
  assert set(result.metrics) == {"all", "seen", "unseen"}  # the task's own class groups
  assert result.metrics["all"]["num_gt_boxes"] == 3
  assert [len(d) for d in result.detections] == [5, 5, 5]  # 16 tokens x 2 queries, best 5
  assert all(d.label in NAMES and 0 <= d.score <= 1 for ds in result.detections for d in ds)
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f)["seen"]["num_gt_boxes"] == 2
  with open(result.prediction_files["test_squares"]) as f:
    lines = [json.loads(line) for line in f]
  assert [line["record_id"] for line in lines] == [f"squares:test[{i}]" for i in range(3)]
  page = open(result.report.html).read()
  assert "predicted" in page and "squares:test[2]" in page
  no_groups = detection_eval.evaluate_detector(
      model=model, params=params, task_name="test_squares", split="test", class_groups={},
      batch_size=2, num_detections=5, output_dir=str(folder / "eval2"), progress=False)
  assert set(no_groups.metrics) == {"all"}
  assert no_groups.metrics["all"]["mAP"] == result.metrics["all"]["mAP"]


def test_palix_eval_runs_the_detection_evaluation(tiny, capsys):
  folder, _, _ = tiny
  try:
    code = cli_main.main([
        "eval", f"--gin_file={folder / 'model.gin'}", "--gin_file=runs/eval_detection.gin",
        f"--gin.CHECKPOINT_PATH='{folder / 'ckpt'}'", "--gin.EVAL_TASK='test_squares'",
        f"--gin.EVAL_OUTPUT_DIR='{folder / 'palix_eval'}'", "--gin.BATCH_SIZE=2"])
  finally:
    gin.clear_config()
  assert code == 0
  out = capsys.readouterr().out
  assert "| seen/mAP_50 |" in out and "report.html" in out
  with open(folder / "palix_eval" / "metrics.json") as f:
    assert set(json.load(f)) == {"all", "seen", "unseen"}
