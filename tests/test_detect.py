"""The Detector API and `palix infer` with runs/detect.gin: scored boxes for free-text queries,
and clear errors for bad queries and unreadable images."""

import json
import os

import gin
import numpy as np
import pytest
from PIL import Image

from palix import detect
from palix.cli import main as cli_main
from palix.tasks.media_io import DataError
from tests import owl_tiny

@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("detect")
  params = owl_tiny.save(folder)
  image = np.full((40, 60, 3), 220, np.uint8)
  image[10:30, 5:25] = (200, 30, 30)
  Image.fromarray(image).save(folder / "image.png")
  (folder / "broken.png").write_bytes(b"not an image")
  return folder, owl_tiny.model(), params


def test_detect_returns_scored_boxes_best_first(files):
  folder, model, params = files
  detector = detect.Detector(model, params)
  found = detector.detect(str(folder / "image.png"), ["bag", "red circle"], max_detections=7)
  assert len(found) == 7 and {d.label for d in found} <= {"bag", "red circle"}
  scores = [d.score for d in found]
  assert scores == sorted(scores, reverse=True) and min(scores) >= 0.1
  for d in found:
    ymin, xmin, ymax, xmax = d.box
    assert 0 <= ymin <= ymax <= 1 and 0 <= xmin <= xmax <= 1
  assert found[0].pixel_box(40, 60) == pytest.approx(
      (found[0].box[1] * 60, found[0].box[0] * 40, found[0].box[3] * 60, found[0].box[2] * 40))
  # the same image as an array gives the same detections
  again = detector.detect(np.asarray(Image.open(folder / "image.png")), ["bag", "red circle"],
                          max_detections=7)
  assert [(d.label, round(d.score, 5)) for d in again] == [(d.label, round(d.score, 5))
                                                          for d in found]
  assert detector.detect(str(folder / "image.png"), ["bag"], score_threshold=1.0) == []


@pytest.mark.parametrize("queries, message", [
    ([], "the query list is empty"),
    (["a", "b", "c", "d"], "4 queries, but the model takes at most 3"),
    (["a red t-shirt and a blue ankle boot"], r"queries\[0\] .* tokens with EOS; queries may have "
                                              "at most 4"),
    (["bag", "  "], r"queries\[1\]: a query must be non-empty"),
    ("bag", "must be a list of texts"),
])
def test_bad_queries_are_named(files, queries, message):
  folder, model, params = files
  with pytest.raises(ValueError, match=message):
    detect.Detector(model, params).detect(str(folder / "image.png"), queries)


def test_unreadable_image_is_named(files):
  folder, model, params = files
  with pytest.raises(DataError, match="broken.png: cannot decode image"):
    detect.Detector(model, params).detect(str(folder / "broken.png"), ["bag"])
  with pytest.raises(DataError, match="missing.png: image file not found"):
    detect.Detector(model, params).detect(str(folder / "missing.png"), ["bag"])


def test_palix_infer_with_the_detect_run_file(files, capsys):
  folder, _, _ = files
  png = str(folder / "out" / "boxes.png")
  try:
    code = cli_main.main([
        "infer", f"--gin_file={folder / 'model.gin'}", "--gin_file=runs/detect.gin",
        f"--gin.CHECKPOINT_PATH='{folder / 'ckpt'}'",
        f"--gin.DETECT_IMAGE='{folder / 'image.png'}'",
        "--gin.DETECT_QUERIES=['bag', 'red circle']", "--gin.DETECT_MAX_DETECTIONS=3",
        f"--gin.DETECT_OUTPUT_PNG='{png}'"])
  finally:
    gin.clear_config()
  assert code == 0
  out = capsys.readouterr().out
  result = json.loads(out[out.index("{"):])
  assert len(result["detections"]) == 3 and result["queries"] == ["bag", "red circle"]
  assert Image.open(png).size[0] >= 320  # drawn, enlarged like report images
  assert os.path.isfile(png)
