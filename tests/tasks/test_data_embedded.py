"""Embedded datasets: easy-VQA (and derived captions), Fashion-MNIST, detection canvases, clips."""

import collections

import numpy as np
import pytest

from palix import loc_tokens
from palix.tasks.sources import easy_vqa
from palix.tasks.sources import fashion_mnist
from palix.tasks.sources import moving_shapes
from palix.tasks.sources import shapes_detection

from tasks_testdata import needs_fashion_mnist  # pylint: disable=g-bad-import-order


def test_easy_vqa_sizes_match_the_package():
  for split, questions, images in (("train", 38575, 4000), ("test", 9673, 1000)):
    assert easy_vqa.EasyVqaSource("vqa").num_input_examples(split) == questions
    assert easy_vqa.EasyVqaSource("caption").num_input_examples(split) == images


def test_question_labels_agree_with_pixels_wherever_questions_decide():
  questions, answers, ids, paths = easy_vqa.split_data("test")
  from_questions = easy_vqa.labels_from_questions(questions, answers, ids)
  checked = 0
  for image_id, found in from_questions.items():
    shape, color = easy_vqa.labels_from_pixels(easy_vqa.read_png(paths[image_id]))
    if "shape" in found:
      assert found["shape"] == shape, image_id
      checked += 1
    if "color" in found:
      assert found["color"] == color, image_id
      checked += 1
  assert checked > 1800  # of 2000 labels, the questions decide about 94%
  labels = easy_vqa.image_labels("test")
  assert len(labels) == 1000 and all(set(v) == {"shape", "color", "from"} for v in labels.values())
  assert collections.Counter(v["shape"] for v in labels.values()).keys() == set(easy_vqa.SHAPES)


def test_yes_no_questions_decide_labels():
  labels = easy_vqa.labels_from_questions(
      ["is there not a red shape?", "does the image contain a circle?", "is no triangle present?",
       "is there a rectangle?"], ["no", "no", "yes", "no"], [7, 7, 7, 8])
  assert labels[7] == {"shape": "rectangle", "color": "red"}  # not circle, not triangle
  assert labels[8] == {}


@needs_fashion_mnist
def test_fashion_mnist_sizes_and_captions():
  images, labels = fashion_mnist.load("test")
  assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [1000] * 10
  assert fashion_mnist.load("train")[0].shape == (60000, 28, 28)
  assert fashion_mnist.caption(1) == "a photo of a trouser"
  assert fashion_mnist.caption(9) == "a photo of an ankle boot"


def test_missing_fashion_mnist_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="apt-get install -y dataset-fashion-mnist"):
    fashion_mnist.load("test", str(tmp_path))


@pytest.fixture(scope="module")
def detection():
  return shapes_detection.ShapesDetectionSource({"train": 50, "test": 20})


@needs_fashion_mnist
def test_detection_canvases_are_deterministic_per_index_and_seed(detection):
  first = detection.make_example("train", 3)
  again = shapes_detection.ShapesDetectionSource({"train": 50}).make_example("train", 3)
  other_seed = shapes_detection.ShapesDetectionSource({"train": 50}, data_seed=1).make_example(
      "train", 3)
  assert np.array_equal(first.pixels, again.pixels) and first.targets == again.targets
  assert not np.array_equal(first.pixels, other_seed.pixels)
  assert not np.array_equal(first.pixels, detection.make_example("train", 4).pixels)


@needs_fashion_mnist
def test_detection_boxes_are_exact_on_the_pixels(detection):
  counts = collections.Counter()
  for index in range(20):
    canvas, placed = detection.objects("test", index)
    counts[len(placed)] += 1
    background = canvas[0, 0].copy()
    covered = np.zeros(canvas.shape[:2], bool)
    for (top, left, bottom, right), label in placed:
      assert label in shapes_detection.CLASSES
      inside = np.any(canvas[top:bottom, left:right] != background, axis=-1)
      # every row and column of the box holds object pixels: the box is tight
      assert inside.any(1).all() and inside.any(0).all(), (index, label)
      assert not covered[top:bottom, left:right].any()  # no overlap
      covered[top:bottom, left:right] = True
    assert np.all(canvas[~covered] == background)  # nothing outside the boxes
    example = detection.make_example("test", index)
    found = loc_tokens.parse_detections(example.targets)
    got = sorted((tuple(round(c * 128) for c in d.box), d.label) for d in found)
    assert got == sorted(placed)  # 128 px canvas: the tokens recover the exact pixel boxes
    prompt_classes = example.inputs[len("detect "):].split(" ; ")
    assert set(label for _, label in placed) <= set(prompt_classes)
  assert set(counts) <= {2, 3, 4} and len(counts) >= 2


def test_moving_shapes_move_as_the_answer_says():
  source = moving_shapes.MovingShapesSource("vqa", {"test": 12}, num_frames=6)
  seen = set()
  for index in range(12):
    frames, sprite, direction, corners = source.clip("test", index)
    assert frames.shape == (6, 96, 96, 3)
    dy, dx = moving_shapes.DIRECTIONS[direction]
    steps = np.diff(np.array(corners), axis=0)
    assert np.all(steps == steps[0])  # constant speed
    assert np.sign(steps[0]).tolist() == [dy, dx]
    example = source.make_example("test", index)
    assert example.inputs == f"answer en which way does the {sprite.label} move?"
    assert example.targets == direction
    np.testing.assert_array_equal(example.pixels, frames)
    seen.add(direction)
  caption = moving_shapes.MovingShapesSource("caption", {"test": 12}).make_example("test", 0)
  assert caption.targets.startswith("a ") and " moving " in caption.targets
  assert len(seen) >= 3
