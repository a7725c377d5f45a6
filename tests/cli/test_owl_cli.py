"""`palix owl`: the OWL-ST stages chained through their files (captions -> queries -> pseudo-boxes
-> COCO read back -> ensemble), the zero-shot check, and errors that name the file and line."""

import json

import flax.linen as nn
import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from palix.cli import main as cli_main
from palix.models import image_text
from palix.models.text_tower import TextTowerConfig
from palix.models.vit import GlobalAveragePool, ViTConfig
from palix.sparsity import counting
from palix.tasks import box_tasks
from tests import owl_tiny
from tests.tasks.tasks_testdata import needs_fashion_mnist

IMAGE_TEXT_GIN = owl_tiny.MODEL_GIN.split("OwlConfig.vit")[0] + """
import palix.models.image_text
TextTowerConfig.max_len = 24
ImageTextConfig.vit = @ViTConfig()
ImageTextConfig.text = @TextTowerConfig()
ImageTextConfig.embed_dim = 8
ImageTextModel.config = @ImageTextConfig()
ImageTextModel.image_size = 32
ImageTextModel.max_text_len = 24
MODEL = @ImageTextModel()
"""


def _owl(args, capsys):
  try:
    code = cli_main.main(["owl", *args])
  finally:
    gin.clear_config()
  out, err = capsys.readouterr()
  return code, (json.loads(out[out.index("{"):]) if code == 0 else err)


@needs_fashion_mnist
def test_owl_st_stages_chain_through_their_files(tmp_path, capsys):
  owl_tiny.save(tmp_path)
  code, result = _owl(["captions", f"--output_dir={tmp_path / 'captions'}", "--num_examples=3"],
                      capsys)
  assert code == 0 and result["images"] == 3
  lines = [json.loads(l) for l in (tmp_path / "captions" / "captions.jsonl").read_text().split(
      "\n") if l]
  assert [l["source"] for l in lines] == [f"shapes_captions:train[{i}]" for i in range(3)]
  assert (tmp_path / "captions" / lines[0]["image"]).is_file()  # relative to the JSONL
  code, result = _owl(["queries", f"--captions={tmp_path / 'captions' / 'captions.jsonl'}",
                       f"--output={tmp_path / 'queries.jsonl'}"], capsys)
  assert code == 0 and result["images"] == 3
  queries = [json.loads(l) for l in (tmp_path / "queries.jsonl").read_text().split("\n") if l]
  source = box_tasks.get_box_task("shapes_captions").source
  for index, record in enumerate(queries):
    labels = source.example("train", index).labels
    assert all(label in record["queries"] for label in labels), (labels, record["queries"])
  code, summary = _owl(["label", f"--gin_file={tmp_path / 'model.gin'}",
                        f"--checkpoint={tmp_path / 'ckpt'}", f"--queries={tmp_path / 'queries.jsonl'}",
                        f"--output_dir={tmp_path / 'pseudo'}", "--box_threshold=0.5",
                        "--image_threshold=0.5"], capsys)
  assert code == 0 and summary["images_kept"] == 3 and summary["boxes"] > 0
  coco = box_tasks.CocoBoxSource({"train": str(tmp_path / "pseudo" / "annotations.json")})
  assert coco.num_examples("train") == 3
  assert set(coco.class_names("train")) <= {q for r in queries for q in r["queries"]}
  code, result = _owl(["ensemble", f"--checkpoint={tmp_path / 'ckpt'}",
                       f"--checkpoint={tmp_path / 'ckpt'}", f"--output_dir={tmp_path / 'avg'}"],
                      capsys)
  assert code == 0 and result["weights"] == [0.5, 0.5]
  original = counting.read_checkpoint_params(str(tmp_path / "ckpt"))
  averaged = counting.read_checkpoint_params(str(tmp_path / "avg"))
  for name, value in original.items():
    np.testing.assert_allclose(averaged[name], value, rtol=1e-6, err_msg=name)


def test_bad_files_are_named(tmp_path, capsys):
  (tmp_path / "captions.jsonl").write_text('{"image": "a.png", "caption": "a bag"}\n{"image": \n')
  code, err = _owl(["queries", f"--captions={tmp_path / 'captions.jsonl'}",
                    f"--output={tmp_path / 'q.jsonl'}"], capsys)
  assert code == 1 and "captions.jsonl:2: not valid JSON" in err
  owl_tiny.save(tmp_path)
  (tmp_path / "queries.jsonl").write_text('{"image": "missing.png", "queries": ["bag"]}\n')
  code, err = _owl(["label", f"--gin_file={tmp_path / 'model.gin'}",
                    f"--checkpoint={tmp_path / 'ckpt'}", f"--queries={tmp_path / 'queries.jsonl'}",
                    f"--output_dir={tmp_path / 'out'}"], capsys)
  assert code == 1 and "queries.jsonl:1: " in err and "missing.png: image file not found" in err
  with pytest.raises(SystemExit):
    cli_main.main(["owl", "queries", "--gin.X=1", "--captions=a", "--output=b"])


@needs_fashion_mnist
def test_zero_shot_stage_scores_every_class(tmp_path, capsys):
  vit = ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, image_size=32,
                  pool=GlobalAveragePool)
  text = TextTowerConfig(vocab_size=2048, max_len=24, width=16, depth=1, mlp_dim=32, num_heads=2)
  model = image_text.ImageTextModel(image_text.ImageTextConfig(vit=vit, text=text, embed_dim=8),
                                    image_size=32, max_text_len=24)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.key(0))["params"])
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / "it"), {"params": params}, force=True)
  (tmp_path / "it.gin").write_text(IMAGE_TEXT_GIN)
  code, result = _owl(["zero-shot", f"--gin_file={tmp_path / 'it.gin'}",
                       f"--checkpoint={tmp_path / 'it'}", "--num_examples=8"], capsys)
  assert code == 0 and result["num_examples"] == 8
  assert 0 <= result["zero_shot_accuracy"] <= 1 and set(result["per_class"]) <= set(
      box_tasks.ALL_CLASSES)
