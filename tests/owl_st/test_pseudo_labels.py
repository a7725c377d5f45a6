"""Pseudo-labelling: box selection by thresholds and per-query NMS, COCO files that the box
tasks read back, and weight-space ensembles."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from palix.models import owl
from palix.models.text_tower import TextTowerConfig
from palix.models.vit import GlobalAveragePool, ViTConfig
from palix.owl_st import ensemble
from palix.owl_st import pseudo_labels
from palix.sparsity import counting
from palix.tasks import box_tasks

THRESHOLDS = pseudo_labels.Thresholds(box_threshold=0.2, image_threshold=0.5, nms_iou=0.5,
                                      max_boxes=3)


def test_select_boxes_thresholds_nms_and_cap():
  boxes = np.array([[0.1, 0.1, 0.3, 0.3],     # token 0: 'bag' 0.9
                    [0.11, 0.1, 0.31, 0.3],   # token 1: 'bag' 0.8, overlaps token 0: suppressed
                    [0.11, 0.1, 0.31, 0.3],   # token 2: 'coat' 0.7, same place, other query: kept
                    [0.6, 0.6, 0.9, 0.9],     # token 3: 'bag' 0.3: kept
                    [0.5, 0.5, 0.5, 0.7],     # token 4: 'coat' 0.6 but no area: dropped
                    [0.0, 0.0, 0.2, 0.2]])    # token 5: best 0.15 < box threshold
  scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [0.3, 0.1], [0.1, 0.6], [0.15, 0.1]])
  kept, over = pseudo_labels.select_boxes(boxes, scores, ["bag", "coat"], THRESHOLDS)
  assert [(label, round(score, 2)) for _, label, score in kept] == [
      ("bag", 0.9), ("coat", 0.7), ("bag", 0.3)]
  assert over == 0
  capped, over = pseudo_labels.select_boxes(
      boxes, scores, ["bag", "coat"], pseudo_labels.Thresholds(0.2, 0.5, 0.5, max_boxes=2))
  assert len(capped) == 2 and over == 1  # counted, not silently lost
  dim = scores * 0.5  # best box 0.45 < image threshold: the whole image goes
  assert pseudo_labels.select_boxes(boxes, dim, ["bag", "coat"], THRESHOLDS) == ([], 0)
  with pytest.raises(ValueError, match="box_threshold"):
    pseudo_labels.Thresholds(box_threshold=1.5)


VIT = ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, image_size=32,
                pool=GlobalAveragePool)
TEXT = TextTowerConfig(vocab_size=2048, max_len=4, width=16, depth=1, mlp_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def model_and_params():
  model = owl.OwlModel(owl.OwlConfig(vit=VIT, text=TEXT, embed_dim=8), image_size=32,
                       max_queries=2, max_query_len=4)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.key(0))["params"])
  # Shift every score up so that the untrained model keeps boxes.
  params["class_head"]["shift"]["bias"] = np.full((1,), 6.0, np.float32)
  return model, params


def _captioned_images(folder):
  records = []
  for k, (caption, queries) in enumerate([("a red bag", ["red", "bag", "red bag"]),
                                          ("a coat", ["coat"])]):
    path = os.path.join(folder, f"{k}.png")
    Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 48, 3), np.uint8)).save(path)
    records.append({"image": path, "caption": caption, "queries": queries, "where": f"r{k}"})
  return records


def test_pseudo_label_writes_coco_that_box_tasks_read_back(tmp_path, model_and_params):
  model, params = model_and_params
  records = _captioned_images(str(tmp_path))
  out = os.path.join(str(tmp_path), "pseudo")
  summary = pseudo_labels.pseudo_label(model, params, records, out,
                                       pseudo_labels.Thresholds(0.5, 0.5, 0.5, max_boxes=4),
                                       batch_size=2, progress=False)
  assert summary["images"] == 2 and summary["images_kept"] == 2 and summary["queries"] == 4
  with open(os.path.join(out, "annotations.json")) as f:
    coco = json.load(f)
  assert [image["queries"] for image in coco["images"]] == [["red", "bag", "red bag"], ["coat"]]
  names = {c["id"]: c["name"] for c in coco["categories"]}
  by_image = {}
  for a in coco["annotations"]:
    by_image.setdefault(a["image_id"], []).append(names[a["category_id"]])
    assert a["score"] >= 0.5 and a["bbox"][2] > 0 and a["bbox"][3] > 0
  assert set(by_image[1]) <= {"red", "bag", "red bag"} and set(by_image[2]) == {"coat"}
  assert summary["boxes"] == len(coco["annotations"]) == len(by_image[1]) + len(by_image[2])
  source = box_tasks.CocoBoxSource({"train": os.path.join(out, "annotations.json")})
  example = source.example("train", 0)
  assert example.image.shape == (40, 48, 3) and example.queries == ("red", "bag", "red bag")
  assert len(example.labels) == len(by_image[1])


def test_long_query_lists_are_exact_in_passes(model_and_params):
  model, params = model_and_params
  from palix.query_tokens import QueryTokenizer
  tokenizer = QueryTokenizer(4)
  pixels = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  queries = ["red", "bag", "coat"]
  (_, scores), = pseudo_labels.detect_all_queries(model, params, tokenizer, pixels, [queries], 4)
  for k, query in enumerate(queries):
    alone = model.detect(params, pixels, tokenizer.encode([query], pad_to=2)[None])
    np.testing.assert_allclose(scores[:, k], np.asarray(alone["scores"])[0, :, 0], rtol=1e-5)


def _save(params, path):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {"params": params}, force=True)


def test_ensemble_is_the_weighted_average(tmp_path):
  a = {"layer": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros((3,), np.float32)}}
  b = {"layer": {"kernel": np.full((2, 3), 3.0, np.float32), "bias": np.ones((3,), np.float32)}}
  _save(a, str(tmp_path / "a"))
  _save(b, str(tmp_path / "b"))
  result = ensemble.average_checkpoints([str(tmp_path / "a"), str(tmp_path / "b")],
                                        [0.25, 0.75], str(tmp_path / "avg"))
  averaged = counting.read_checkpoint_params(result["output_dir"])
  np.testing.assert_allclose(averaged["layer/kernel"], np.full((2, 3), 2.5))
  np.testing.assert_allclose(averaged["layer/bias"], np.full((3,), 0.75))
  other = {"layer": {"kernel": np.ones((3, 3), np.float32), "bias": np.zeros((3,), np.float32)}}
  _save(other, str(tmp_path / "c"))
  with pytest.raises(ValueError, match=r"layer/kernel: shape \(2, 3\) vs \(3, 3\)"):
    ensemble.average_checkpoints([str(tmp_path / "a"), str(tmp_path / "c")], [0.5, 0.5],
                                 str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="sum to 1"):
    ensemble.average_checkpoints([str(tmp_path / "a"), str(tmp_path / "b")], [0.5, 0.7],
                                 str(tmp_path / "bad2"))
