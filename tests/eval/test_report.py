"""Report writer: files exist, JSON round-trips, images exist and show boxes, text is escaped."""

import html.parser
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from palix.eval.metrics import ScoredDetection
from palix.eval.report import ReportBox, ReportSample, write_report
from palix.eval.report import images as report_images
from palix.eval.report.metrics_table import format_value

METRICS = {"vqa_accuracy": 71.23456, "vqa_accuracy/yes/no": 90.0, "count": 3,
           "detection": {"mAP": 0.5, "mAP_50": 0.75}}


class _Collector(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.tags, self.image_sources, self.text = [], [], []

  def handle_starttag(self, tag, attrs):
    self.tags.append(tag)
    if tag == "img":
      self.image_sources.append(dict(attrs)["src"])

  def handle_data(self, data):
    self.text.append(data)


def _samples():
  rng = np.random.default_rng(0)
  float_image = rng.uniform(-1, 1, (32, 48, 3)).astype(np.float32)  # model range
  uint8_image = np.full((40, 40, 3), 200, np.uint8)
  return [
      ReportSample(image=float_image, prompt="answer en what color?", prediction="red",
                   target=["red", "dark red"], score=1.0, correct=True,
                   extra={"question_id": 7}),
      {"image": uint8_image, "prompt": "detect cat ; dog", "prediction": "<loc0001>... cat",
       "target": "cat", "predicted_boxes": [ScoredDetection((0.1, 0.1, 0.6, 0.5), "cat", -0.3)],
       "target_boxes": [{"box": (0.2, 0.5, 0.9, 0.95), "label": "dog"}], "correct": False},
      ReportSample(image=np.stack([float_image, float_image]), prompt="<script>alert(1)</script>",
                   prediction="a <b>bold</b> & \"quoted\" answer", target="x < y"),
      ReportSample(prompt="no image at all", prediction="fine"),
  ]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("report"))
  files = write_report(out, metrics=METRICS, samples=_samples(), title="Eval <easy-vqa>",
                       description="tiny model, step 10")
  return out, files


def test_files_exist_and_json_round_trips(report):
  out, files = report
  for name in ("metrics.json", "metrics.md", "report.html"):
    assert os.path.isfile(os.path.join(out, name))
  with open(files.metrics_json) as f:
    assert json.load(f) == METRICS
  with open(files.metrics_md) as f:
    md = f.read()
  assert "| vqa_accuracy | 71.2346 |" in md and "| detection/mAP_50 | 0.75 |" in md


def test_every_image_exists_and_text_is_escaped(report):
  out, files = report
  with open(files.html, encoding="utf-8") as f:
    page = f.read()
  parser = _Collector()
  parser.feed(page)
  # 1 + 1 + 2 images; the image-less sample has none
  assert len(parser.image_sources) == 4
  for src in parser.image_sources:
    assert os.path.isfile(os.path.join(out, src)), src
  assert sorted(os.path.join(out, s) for s in parser.image_sources) == sorted(files.images)
  # no element came from sample text: the only tags are the page's own
  assert "script" not in parser.tags and "b" not in parser.tags
  assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
  text = "".join(parser.text)
  assert "<script>alert(1)</script>" in text and 'a <b>bold</b> & "quoted" answer' in text
  assert "Eval <easy-vqa>" in text and "red | dark red" in text and "question_id" in text


def test_boxes_are_drawn_in_two_colours(report):
  out, _ = report
  picture = np.asarray(Image.open(os.path.join(out, "images", "sample_00001_0.png")))
  # the 40x40 image is enlarged 8x to 320x320; the flat grey background has neither colour
  assert picture.shape == (320, 320, 3)
  def has(color):
    return bool(np.all(picture == np.array(color, np.uint8), axis=-1).any())
  assert has(report_images.PREDICTED_COLOR) and has(report_images.TARGET_COLOR)
  # the predicted box (ymin .1, xmin .1, ymax .6) has its left edge at x = 32, rows 32..192
  column = picture[100:150, 32]
  assert np.all(column == np.array(report_images.PREDICTED_COLOR, np.uint8), axis=-1).all()


def test_float_images_map_from_minus_one_one():
  image = np.array([[[-1.0, 0.0, 1.0]]], np.float32)
  assert report_images.to_uint8(0, image).tolist() == [[[0, 128, 255]]]
  with pytest.raises(ValueError, match=r"sample 3: float pixels must be in \[-1, 1\]"):
    report_images.to_uint8(3, np.full((2, 2, 3), 255.0))
  with pytest.raises(ValueError, match="dtype int64"):
    report_images.to_uint8(0, np.zeros((2, 2, 3), np.int64))


def test_nan_metrics_become_null_and_rerun_replaces_images(tmp_path):
  files = write_report(str(tmp_path), metrics={"mAP_small": math.nan}, title="t",
                       samples=_samples()[:2])
  with open(files.metrics_json) as f:
    assert json.load(f) == {"mAP_small": None}
  assert len(os.listdir(tmp_path / "images")) == 2
  write_report(str(tmp_path), metrics={}, title="t", samples=_samples()[:1])
  assert os.listdir(tmp_path / "images") == ["sample_00000_0.png"]


def test_max_samples(tmp_path):
  files = write_report(str(tmp_path), metrics={}, samples=_samples(), title="t", max_samples=1)
  with open(files.html) as f:
    assert "1 of 4 samples" in f.read()


@pytest.mark.parametrize("sample,message", [
    ({"prompt": "x", "answer": "y"}, "sample 0: unknown keys ['answer']"),
    ("just text", "sample 0 must be a ReportSample or a dict"),
    (ReportSample(predicted_boxes=[(0.1, 0.2)]), "sample 0: a box needs 4 normalised"),
    (ReportSample(image=np.zeros((2, 2, 2, 2, 3))), "sample 0: an image must be"),
])
def test_bad_samples(tmp_path, sample, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    write_report(str(tmp_path), metrics={}, samples=[sample], title="t")


def test_format_value():
  assert [format_value(v) for v in (71.23456, 0.5, 100.0, 3, math.nan, None, -0.00001, "x")] == \
      ["71.2346", "0.5", "100", "3", "n/a", "n/a", "0", "x"]
  assert ReportBox((0, 0, 1, 1)).label == ""
