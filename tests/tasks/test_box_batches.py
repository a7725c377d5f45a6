"""Detection batches: boxes and queries agree with the source, mosaics, flips, negatives, exact
resumption, COCO files and the errors that name the bad annotation or image."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from palix.query_tokens import QueryTokenizer
from palix.tasks import box_batches
from palix.tasks import box_tasks
from palix.tasks.media_io import DataError
from tests.tasks.tasks_testdata import needs_fashion_mnist

LENGTHS = {"queries": 6, "query_length": 4, "instances": 12}
NAMES = ("circle", "bag", "coat", "dress", "sandal")


class DrawnBoxes(box_tasks.BoxSource):
  """Example i: a 32 px grey image with (i % 3) + 1 solid squares of known classes."""

  def num_examples(self, split):
    return 10

  def example(self, split, index):
    rng = np.random.default_rng(index)
    image = np.full((32, 32, 3), 200, np.uint8)
    boxes, labels = [], []
    for k in range(index % 3 + 1):
      top, left = 10 * k, int(rng.integers(0, 20))
      image[top:top + 8, left:left + 12] = 40 * (k + 1)
      boxes.append((top / 32, left / 32, (top + 8) / 32, (left + 12) / 32))
      labels.append(NAMES[(index + k) % len(NAMES)])
    return box_tasks.BoxExample(image, np.array(boxes, np.float32), tuple(labels),
                                f"drawn:{split}[{index}]")

  def class_names(self, split):
    return NAMES


@pytest.fixture(scope="module", autouse=True)
def drawn_task():
  box_tasks.add_box_task("test_drawn_boxes", DrawnBoxes(), replace=True)


def _batches(task="test_drawn_boxes", **kwargs):
  args = dict(split="train", batch_size=4, feature_lengths=LENGTHS, image_size=32,
              prefetch=False)
  args.update(kwargs)
  return box_batches.get_box_batches(task, **args)


def _query_texts(tokens, tokenizer):
  return [tokenizer.tokenizer.to_str(row) if row.any() else None for row in tokens]


def test_finite_stream_matches_the_source_in_order():
  source, tokenizer = DrawnBoxes(), QueryTokenizer(4)
  batches = list(_batches(repeat=False, shuffle=False))
  assert len(batches) == 3  # 10 examples, batches of 4: the last has 2 padding rows
  for key, shape in (("images", (4, 32, 32, 3)), ("query_tokens", (4, 6, 4)),
                     ("boxes", (4, 12, 4)), ("box_labels", (4, 12))):
    assert batches[0][key].shape == shape
  for position in range(10):
    batch, row = batches[position // 4], position % 4
    example = source.example("train", position)
    np.testing.assert_allclose(batch["images"][row], example.image / 127.5 - 1, atol=1e-6)
    n = len(example.labels)
    np.testing.assert_allclose(batch["boxes"][row, :n],
                               box_batches.yxyx_to_cxcywh(example.boxes), atol=1e-6)
    assert np.all(batch["box_labels"][row, n:] == -1)
    queries = _query_texts(batch["query_tokens"][row], tokenizer)
    assert [queries[k] for k in batch["box_labels"][row, :n]] == list(example.labels)
    real = [q for q in queries if q is not None]
    assert len(set(real)) == len(real) and set(real) <= set(NAMES)
    # every other class of the vocabulary fills the queries as a negative (up to 6 queries)
    assert len(real) == min(6, len(NAMES))
  padding = batches[2]
  assert not padding["query_tokens"][2:].any() and np.all(padding["box_labels"][2:] == -1)


def test_resume_and_shards_give_the_same_global_batches():
  stream = _batches(mosaic_sizes=(1, 2))
  first = [next(stream) for _ in range(3)]
  resumed = next(_batches(mosaic_sizes=(1, 2), start_step=2))
  for key in first[2]:
    np.testing.assert_array_equal(first[2][key], resumed[key], err_msg=key)
  shard0 = next(_batches(mosaic_sizes=(1, 2), batch_size=2, num_shards=2, shard_index=0))
  shard1 = next(_batches(mosaic_sizes=(1, 2), batch_size=2, num_shards=2, shard_index=1))
  for key in first[0]:
    np.testing.assert_array_equal(np.concatenate([shard0[key], shard1[key]]), first[0][key])
  prefetched = next(_batches(mosaic_sizes=(1, 2), prefetch=True))
  np.testing.assert_array_equal(prefetched["images"], first[0]["images"])


def test_mosaic_tiles_shrink_images_and_boxes():
  examples = [DrawnBoxes().example("train", i) for i in range(4)]
  image, boxes, labels = box_batches.mosaic(examples, 2, 32)
  assert image.shape == (32, 32, 3) and len(labels) == sum(len(e.labels) for e in examples)
  np.testing.assert_array_equal(image[16:, 16:], box_batches.resize(examples[3].image, 16))
  start = sum(len(e.labels) for e in examples[:3])
  np.testing.assert_allclose(boxes[start:], 0.5 + examples[3].boxes / 2, atol=1e-6)
  batch = next(_batches(mosaic_sizes=(2,), mosaic_probabilities=(1.0,)))
  assert (batch["box_labels"] >= 0).sum(1).min() >= 4  # four tiles, each with a box
  assert np.all(batch["boxes"][..., 2:][batch["box_labels"] >= 0] <= 12 / 64 + 1e-6)


def test_flip_mirrors_the_pixels_of_each_box():
  example = DrawnBoxes().example("train", 2)
  image, boxes = box_batches.flip_left_right(example.image, example.boxes)
  for before, after in zip(example.boxes, boxes):
    (t, l, b, r), (t2, l2, b2, r2) = (np.round(before * 32).astype(int),
                                      np.round(after * 32).astype(int))
    np.testing.assert_array_equal(image[t2:b2, l2:r2], example.image[t:b, l:r][:, ::-1])


def test_too_many_classes_or_boxes_is_an_error_naming_the_example():
  with pytest.raises(DataError, match=r"drawn:train\[2\].*3 different classes.*'queries'"):
    next(_batches(repeat=False, shuffle=False, feature_lengths=dict(LENGTHS, queries=2)))
  with pytest.raises(DataError, match=r"drawn:train\[2\]: 3 boxes.*'instances'"):
    next(_batches(repeat=False, shuffle=False, feature_lengths=dict(LENGTHS, instances=2)))
  with pytest.raises(ValueError, match="query_length"):
    next(_batches(feature_lengths={"queries": 4, "instances": 4}))
  with pytest.raises(ValueError, match="mosaic_probabilities"):
    next(_batches(mosaic_sizes=(1, 2), mosaic_probabilities=(0.5,)))


@needs_fashion_mnist
def test_seen_task_boxes_only_seen_classes_and_queries_only_seen_names():
  tokenizer = QueryTokenizer(4)
  batch = next(_batches(task="shapes_detection_seen", batch_size=8, image_size=64,
                        feature_lengths={"queries": 12, "query_length": 4, "instances": 16},
                        mosaic_sizes=(1, 2)))
  for row in range(8):
    queries = [q for q in _query_texts(batch["query_tokens"][row], tokenizer) if q]
    assert set(queries) <= set(box_tasks.SEEN_CLASSES)
  full = box_tasks.get_box_task("shapes_detection").source
  seen = box_tasks.get_box_task("shapes_detection_seen").source
  for index in range(20):
    a, b = full.example("train", index), seen.example("train", index)
    np.testing.assert_array_equal(a.image, b.image)  # unseen objects stay in the picture
    assert list(b.labels) == [c for c in a.labels if c in box_tasks.SEEN_CLASSES]


def _write_coco(folder, annotations, images=None, categories=None):
  os.makedirs(folder, exist_ok=True)
  Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(os.path.join(folder, "a.png"))
  data = {"images": images or [{"id": 7, "file_name": "a.png", "width": 30, "height": 20,
                                "caption": "a bag"}],
          "annotations": annotations,
          "categories": categories or [{"id": 1, "name": "bag"}, {"id": 2, "name": "red coat"}]}
  path = os.path.join(folder, "annotations.json")
  with open(path, "w") as f:
    json.dump(data, f)
  return path


def test_coco_files_become_batches(tmp_path):
  path = _write_coco(str(tmp_path), [
      {"id": 11, "image_id": 7, "bbox": [3, 2, 12, 10], "category_id": 1},
      {"id": 12, "image_id": 7, "bbox": [15, 5, 15, 15], "category_id": 2}],
      images=[{"id": 7, "file_name": "a.png", "width": 30, "height": 20, "caption": "a bag",
               "queries": ["bag", "red coat", "shoe"]}],
      categories=[{"id": 1, "name": "bag"}, {"id": 2, "name": "red coat"},
                  {"id": 3, "name": "hat"}, {"id": 4, "name": "shoe"}])
  source = box_tasks.CocoBoxSource({"train": path})
  example = source.example("train", 0)
  np.testing.assert_allclose(example.boxes, [[0.1, 0.1, 0.6, 0.5], [0.25, 0.5, 1.0, 1.0]],
                             atol=1e-6)
  assert example.labels == ("bag", "red coat") and example.caption == "a bag"
  batch = next(box_batches.get_box_batches(
      "pseudo", split="train", batch_size=1, feature_lengths=LENGTHS, image_size=32,
      sources={"pseudo": source}, repeat=False, prefetch=False))
  queries = _query_texts(batch["query_tokens"][0], QueryTokenizer(4))
  assert [queries[k] for k in batch["box_labels"][0, :2]] == ["bag", "red coat"]
  # 'shoe' is one of the image's own (unboxed) queries: never its negative; 'hat' is
  assert {q for q in queries if q} == {"bag", "red coat", "hat"}


@pytest.mark.parametrize("annotation, message", [
    ({"id": 31, "image_id": 7, "bbox": [20, 2, 12, 10], "category_id": 1},
     r"annotation id 31 \(annotations\[0\]\).*lies outside the 30x20 image"),
    ({"id": 32, "image_id": 7, "bbox": [1, 1, 5, 5], "category_id": 9},
     r"annotation id 32 \(annotations\[0\]\): category_id 9 is not in 'categories'"),
    ({"id": 33, "image_id": 8, "bbox": [1, 1, 5, 5], "category_id": 1},
     r"annotation id 33 .*image_id 8 is not in 'images'"),
    ({"id": 34, "image_id": 7, "bbox": [1, 1, 0, 5], "category_id": 1},
     r"annotation id 34 .*has no area"),
])
def test_bad_coco_annotations_name_the_annotation_id(tmp_path, annotation, message):
  path = _write_coco(str(tmp_path), [annotation])
  with pytest.raises(DataError, match=message):
    box_tasks.CocoBoxSource({"train": path}).num_examples("train")


def test_unreadable_coco_image_is_named(tmp_path):
  path = _write_coco(str(tmp_path), [], images=[
      {"id": 7, "file_name": "a.png", "width": 30, "height": 20},
      {"id": 8, "file_name": "broken.png", "width": 30, "height": 20}])
  with open(os.path.join(str(tmp_path), "broken.png"), "wb") as f:
    f.write(b"not a png")
  with pytest.raises(DataError, match=r"image 8: .*broken.png: not a readable image"):
    box_tasks.CocoBoxSource({"train": path}).num_examples("train")
