"""Loaders for public formats (COCO captions, VQAv2, COCO detection) and JSONL, on fixtures.

Expected location tokens are derived by hand: a coordinate c becomes round(c * 1023).
"""

import json

import numpy as np
import pytest

from palix.tasks import dataset
from palix.tasks import preprocessors
from palix.tasks import registry
from palix.tasks.sources import base
from palix.tasks.sources import coco_captions
from palix.tasks.sources import coco_detection
from palix.tasks.sources import jsonl
from palix.tasks.sources import vqav2

# img_a is 40 wide x 30 high; its red square is x in [10, 30), y in [6, 18):
# ymin 6/30 = 0.2 -> 204.6 -> 205; xmin 10/40 = 0.25 -> 255.75 -> 256;
# ymax 18/30 = 0.6 -> 613.8 -> 614; xmax 30/40 = 0.75 -> 767.25 -> 767.
SQUARE = "<loc0205><loc0256><loc0614><loc0767>"
# its black bar: bbox [0, 0, 5, 30] -> (0, 0, 30/30 = 1 -> 1023, 5/40 = 0.125 -> 127.875 -> 128)
BAR_A = "<loc0000><loc0000><loc1023><loc0128>"
# img_b is 20 x 50; bbox [5, 10, 10, 40.4] reaches y = 50.4 (within 1 px): clipped to 50 ->
# (10/50 = 0.2 -> 205, 5/20 = 0.25 -> 256, 50/50 -> 1023, 15/20 = 0.75 -> 767)
BAR_B = "<loc0205><loc0256><loc1023><loc0767>"


def _summary(records):
  return [(r.inputs, r.targets, [p.rsplit("/", 1)[-1] for p in r.image_paths], dict(r.extras))
          for r in records]


def test_coco_captions_per_caption_and_per_image(media_dir):
  files = {"val": (str(media_dir / "coco_captions.json"), str(media_dir))}
  source = coco_captions.CocoCaptionsSource(files)
  assert _summary(source.records("val")) == [
      ("caption en", "A red square next to a black bar.", ["img_a.png"], {"image_id": ("1",)}),
      ("caption en", "a red block", ["img_a.png"], {"image_id": ("1",)}),
      ("caption en", "A tall blue bar.", ["img_b.jpg"], {"image_id": ("2",)}),
  ]
  assert source.records("val")[1].record_id.endswith("coco_captions.json: annotations[1]")
  assert source.load_report("val").notes == [
      f"1 images of {files['val'][0]} have no caption and give no example"]
  per_image = coco_captions.CocoCaptionsSource(files, per_image=True)
  assert [(r.targets, r.extras["references"]) for r in per_image.records("val")] == [
      ("A red square next to a black bar.", ("A red square next to a black bar.", "a red block")),
      ("A tall blue bar.", ("A tall blue bar.", "")),
  ]


def test_vqav2_questions_and_annotations(media_dir):
  source = vqav2.Vqav2Source({"val": (str(media_dir / "vqav2_questions.json"),
                                      str(media_dir / "vqav2_annotations.json"), str(media_dir))})
  first, second = source.records("val")
  assert (first.inputs, first.targets) == ("answer en What color is the square?", "red")
  assert first.image_paths[0].endswith("COCO_val2014_000000000001.jpg")
  assert first.extras == {"answers": ("red",) * 7 + ("dark red", "orange", "red"),
                          "answer_type": ("other",), "question_id": ("10",), "image_id": ("1",)}
  assert (second.inputs, second.targets, second.extras["answer_type"]) == \
      ("answer en Is the bar tall?", "yes", ("yes/no",))
  assert "questions[1] (question_id 20)" in second.record_id


def test_coco_detection_boxes_in_pixels_become_loc_tokens(media_dir):
  path = str(media_dir / "coco_instances.json")
  source = coco_detection.CocoDetectionSource({"val": (path, str(media_dir))})
  assert _summary(source.records("val")) == [
      ("detect bar ; square", f"{BAR_A} bar ; {SQUARE} square", ["img_a.png"],
       {"image_id": ("1",)}),
      ("detect bar", f"{BAR_B} bar", ["img_b.jpg"], {"image_id": ("2",)}),
  ]
  assert source.load_report("val").notes == [
      f"1 crowd annotations (iscrowd=1) of {path} are not targets",
      f"1 images of {path} have no non-crowd box and give no example"]


def test_jsonl_records(media_dir):
  source = jsonl.JsonlSource({"train": str(media_dir / "data.jsonl")})
  assert _summary(source.records("train")) == [
      ("caption en", "a red square", ["img_a.png"], {}),
      ("answer en what color is the bar?", "blue", ["img_b.jpg"], {}),
      ("detect square", f"{SQUARE} square", ["img_a.png"], {}),
      ("caption en", "a square and a bar", ["img_a.png", "img_b.jpg"], {}),
  ]
  assert source.records("train")[2].record_id.endswith("data.jsonl:4 (id det-1)")


@pytest.fixture(scope="module")
def jsonl_task(media_dir):
  registry.add_task("test_jsonl", jsonl.JsonlSource({"train": str(media_dir / "data.jsonl")}),
                    replace=True)
  return "test_jsonl"


def test_jsonl_through_the_batch_pipeline(jsonl_task, vocab):
  from palix.tasks import show  # pylint: disable=g-import-not-at-top
  batches = list(dataset.get_batches(jsonl_task, split="train", batch_size=3,
                                     feature_lengths={"inputs": 16, "targets": 24}, num_images=2,
                                     image_size=32, shuffle=False, repeat=False))
  assert len(batches) == 2  # 4 examples, batches of 3: the last has 2 zero rows
  rows = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
  texts = show.batch_texts(rows, vocab)
  assert texts[:4] == [("caption en", "a red square"),
                       ("answer en what color is the bar?", "blue"),
                       ("detect square", f"{SQUARE} square"),
                       ("caption en", "a square and a bar")]
  np.testing.assert_array_equal(rows["image_mask"],
                                [[1, 0], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0]])
  assert np.all(rows["decoder_loss_weights"][4:] == 0) and np.all(rows["images"][4:] == 0)
  # The detection box (0.2, 0.25, 0.6, 0.75) of the 32x32 image: its centre (12.8, 16) is red.
  red = np.array([220, 20, 20]) / 127.5 - 1
  np.testing.assert_allclose(rows["images"][2, 0, 13, 16], red, atol=0.03)
  np.testing.assert_allclose(rows["images"][2, 0, 2, 16], 1.0, atol=0.03)  # white above it


def test_video_jsonl_clip_and_frame_folder(media_dir):
  registry.add_task("test_video", jsonl.JsonlSource({"train": str(media_dir / "video.jsonl")},
                                                    num_frames=4), replace=True)
  batch = next(dataset.get_batches("test_video", split="train", batch_size=2,
                                   feature_lengths={"inputs": 16, "targets": 16}, num_images=4,
                                   image_size=32, shuffle=False, repeat=False))
  assert batch["images"].shape == (2, 4, 32, 32, 3)
  # a clip's later frames are marked 2 (palix.models.packed_batch: the next frame of a clip)
  np.testing.assert_array_equal(batch["image_mask"], [[1, 2, 2, 2]] * 2)
  for clip in batch["images"]:
    red = (clip[..., 0] > 0.4) & (clip[..., 1] < -0.4)
    centres = [np.nonzero(frame.any(0))[0].mean() for frame in red]
    assert all(b > a + 2 for a, b in zip(centres, centres[1:])), centres  # moving right
  with pytest.raises(ValueError, match="samples 4 frames per clip but DecodeMedia has num_frames=8"):
    registry.add_task("test_video_mismatch",
                      jsonl.JsonlSource({"train": str(media_dir / "video.jsonl")}, num_frames=4),
                      preprocessors.DecodeMedia(flip=True))


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_malformed_json_names_file_and_line(tmp_path):
  bad = _write(tmp_path / "bad.json", '{\n  "images": [\n    {"id": 1,,}\n')
  with pytest.raises(base.DataError, match=r"bad.json:3: malformed JSON"):
    coco_captions.CocoCaptionsSource({"val": (bad, str(tmp_path))}).records("val")
  lines = _write(tmp_path / "bad.jsonl",
                 '{"image": "a.png", "prefix": "p", "suffix": "s"}\n{oops\n')
  with pytest.raises(base.DataError, match=r"bad.jsonl:2: malformed JSON"):
    jsonl.JsonlSource({"train": lines}, verify_images=False).records("train")


def test_missing_and_corrupt_images_name_the_file(media_dir, tmp_path):
  missing = _write(tmp_path / "missing.jsonl",
                   '{"image": "nope.png", "prefix": "p", "suffix": "s"}\n')
  with pytest.raises(base.DataError, match=r"missing.jsonl:1: .*nope.png: image file not found"):
    jsonl.JsonlSource({"train": missing}).records("train")
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
  corrupt = _write(tmp_path / "corrupt.jsonl",
                   '{"image": "corrupt.png", "prefix": "p", "suffix": "s"}\n')
  with pytest.raises(base.DataError, match=r"corrupt.jsonl:1: .*corrupt.png: not a readable image"):
    jsonl.JsonlSource({"train": corrupt}).records("train")
  # Without load-time verification the decoder still names the file when the batch is built.
  registry.add_task("test_corrupt", jsonl.JsonlSource({"train": corrupt}, verify_images=False),
                    replace=True)
  with pytest.raises(base.DataError, match=r"corrupt.png: cannot decode image"):
    next(dataset.get_batches("test_corrupt", split="train", batch_size=1, image_size=8,
                             feature_lengths={"inputs": 8, "targets": 8}))


def test_boxes_outside_the_image_are_errors(media_dir, tmp_path):
  line = '{"image": "%s", "boxes": [[0.1, 0.1, 1.2, 0.5]], "labels": ["cat"]}\n' % (
      media_dir / "img_a.png")
  outside = _write(tmp_path / "outside.jsonl", line)
  with pytest.raises(base.DataError, match=r"outside.jsonl:1: boxes\[0\] .* lies outside"):
    jsonl.JsonlSource({"train": outside}).records("train")
  instances = json.loads((media_dir / "coco_instances.json").read_text())
  instances["annotations"][0]["bbox"] = [35, 6, 10, 12]  # x + w = 45 > 40 + 1
  path = _write(tmp_path / "instances.json", json.dumps(instances))
  with pytest.raises(base.DataError, match=r"annotations\[0\] of img_a.png: bbox .* outside the 40x30 image"):
    coco_detection.CocoDetectionSource({"val": (path, str(media_dir))}).records("val")


def test_empty_targets_are_errors(media_dir, tmp_path):
  line = '{"image": "%s", "prefix": "caption en", "suffix": " "}\n' % (media_dir / "img_a.png")
  empty = _write(tmp_path / "empty.jsonl", line)
  with pytest.raises(base.DataError, match=r"empty.jsonl:1: empty target"):
    jsonl.JsonlSource({"train": empty}).records("train")
  captions = json.loads((media_dir / "coco_captions.json").read_text())
  captions["annotations"][2]["caption"] = "   "
  path = _write(tmp_path / "captions.json", json.dumps(captions))
  with pytest.raises(base.DataError, match=r"annotations\[2\]: empty target"):
    coco_captions.CocoCaptionsSource({"val": (path, str(media_dir))}).records("val")


def test_vqav2_needs_ten_answers(media_dir, tmp_path):
  annotations = json.loads((media_dir / "vqav2_annotations.json").read_text())
  annotations["annotations"][1]["answers"].pop()
  path = _write(tmp_path / "ann.json", json.dumps(annotations))
  source = vqav2.Vqav2Source({"val": (str(media_dir / "vqav2_questions.json"), path,
                                      str(media_dir))})
  with pytest.raises(base.DataError, match=r"ann.json: annotations\[1\]: question_id 20 has 9 "
                                           r"answers, expected 10"):
    source.records("val")


def test_skipping_bad_records_is_opt_in_and_counted(media_dir, tmp_path):
  good = '{"image": "%s", "prefix": "caption en", "suffix": "ok"}' % (media_dir / "img_a.png")
  lines = [good, "{not json", '{"image": "gone.png", "prefix": "p", "suffix": "s"}', good,
           '{"image": "%s", "prefix": "p", "suffix": ""}' % (media_dir / "img_a.png")]
  path = _write(tmp_path / "mixed.jsonl", "\n".join(lines) + "\n")
  with pytest.raises(base.DataError, match="mixed.jsonl:2"):
    jsonl.JsonlSource({"train": path}).records("train")
  source = jsonl.JsonlSource({"train": path}, skip_bad_records=True)
  assert [r.record_id.rsplit(":", 1)[-1] for r in source.records("train")] == ["1", "4"]
  report = source.load_report("train")
  assert (report.num_examples, report.num_skipped) == (2, 3)
  assert [m.split(": ")[0].rsplit(":", 1)[-1] for m in report.skipped_examples] == ["2", "3", "5"]
