"""``palix convert --from=t5x|big_vision`` and ``--to=hf`` through the real command (palix.cli.main):
what is written is what the importers return, config.gin rebuilds the model, an export is read back
by the HF importer bit for bit, and bad input is one error line."""

import flax.linen as nn
import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from palix import config as palix_config
from palix.cli import main as cli_main
from palix.interop import big_vision
from palix.interop import hf_t5
from palix.interop import t5x
from palix.models.t5 import T5Config

from big_vision_files import CLASSES, random_vit_arrays
from t5x_files import random_hf_weights, t5x_target, write_legacy


def _restore(path):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)["params"]


def _assert_same(got, expected):
  got = traverse_util.flatten_dict(jax.device_get(got), sep="/")
  expected = traverse_util.flatten_dict(expected, sep="/")
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


def _model_from_gin(path):
  return palix_config.model_from_gin([str(path)])


def _t5x_checkpoint(folder):
  """A legacy T5X model folder holding a random tiny T5.1.1."""
  sd = random_hf_weights()
  write_legacy(folder / "checkpoint_10", t5x_target(sd))
  return sd


def test_from_t5x_then_to_hf_round_trip(tmp_path, capsys):
  sd = _t5x_checkpoint(tmp_path / "t5x")
  out = tmp_path / "palix"
  assert cli_main.main(["convert", "--from=t5x", f"--input={tmp_path / 't5x'}",
                        f"--output={out}", "--relative_attention_max_distance=20"]) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  config, expected = t5x.load_t5x(tmp_path / "t5x", relative_attention_max_distance=20)
  _assert_same(_restore(out), expected)
  assert printed[-1] == f"total_params: {sum(v.size for v in sd.values())}"
  spec = _model_from_gin(out / "config.gin")
  assert spec.config == config

  hf = tmp_path / "hf"
  assert cli_main.main(["convert", "--to=hf", f"--input={out}", f"--output={hf}"]) == 0
  assert capsys.readouterr().out.strip().splitlines()[-1] == printed[-1]
  hf_config, back = hf_t5.load_hf_t5(hf)
  assert hf_config == config
  _assert_same(back, expected)


def test_from_big_vision_classifier(tmp_path, capsys):
  path = tmp_path / "vit.npz"
  np.savez(path, **random_vit_arrays(0, pool="map", head=True))
  out = tmp_path / "palix"
  assert cli_main.main(["convert", "--from=big_vision", f"--input={path}", f"--output={out}"]) == 0
  total = capsys.readouterr().out.strip().splitlines()[-1]
  imported = big_vision.load_big_vision(path)
  _assert_same(_restore(out), {"vit": imported.params, "head": imported.head})
  model = _model_from_gin(out / "config.gin")  # a ClassifierModel of the imported ViT
  assert model.config.vit == imported.config and model.num_classes == CLASSES
  gin.clear_config()
  try:
    assert cli_main.main(["params", f"--gin_file={out / 'config.gin'}"]) == 0
  finally:
    gin.clear_config()
  assert capsys.readouterr().out.strip().splitlines()[-1] == total
  encoder = tmp_path / "encoder"  # --drop_head: the ViT alone (VisionEncoder)
  assert cli_main.main(["convert", "--from=big_vision", f"--input={path}", f"--output={encoder}",
                        "--drop_head"]) == 0
  assert _model_from_gin(encoder / "config.gin").config == imported.config


def test_to_hf_needs_a_tower_for_palix(tmp_path, capsys):
  """A PaLI-X checkpoint has two towers: --tower picks the one to export."""
  folder = tmp_path / "palix"
  folder.mkdir()
  (folder / "config.gin").write_text("include 'models/palix/palix_tiny.gin'\n"
                                     "T5Config.vocab_size = 64\n")
  model = _model_from_gin(folder / "config.gin")
  init = jax.jit(lambda rng: nn.meta.unbox(model.get_initial_variables(rng)["params"]))
  params = jax.device_get(init(jax.random.PRNGKey(0)))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(folder / "ckpt", {"params": params})
  (folder / "ckpt" / "config.gin").write_text((folder / "config.gin").read_text())
  code = cli_main.main(["convert", "--to=hf", f"--input={folder / 'ckpt'}",
                        f"--output={tmp_path / 'hf'}"])
  assert code == 1 and "choose one with --tower" in capsys.readouterr().err
  assert cli_main.main(["convert", "--to=hf", f"--input={folder / 'ckpt'}", "--tower=t5",
                        f"--output={tmp_path / 'hf'}"]) == 0
  config, back = hf_t5.load_hf_t5(tmp_path / "hf")
  assert isinstance(config, T5Config) and config.vocab_size == 64
  _assert_same(back, params["text"])


def test_errors_are_one_line(tmp_path, capsys):
  def convert(*args):
    code = cli_main.main(["convert", *args, f"--output={tmp_path / 'never'}"])
    return code, capsys.readouterr().err

  code, err = convert("--from=t5x", f"--input={tmp_path}")
  assert code == 1 and "not a T5X checkpoint" in err
  bad = tmp_path / "bad.npz"
  np.savez(bad, **{k: v for k, v in random_vit_arrays(1).items()
                   if k != "Transformer/encoderblock_0/LayerNorm_0/bias"})
  code, err = convert("--from=big_vision", f"--input={bad}")
  assert code == 1 and "missing 'Transformer/encoderblock_0/LayerNorm_0/bias'" in err
  assert len(err.strip().splitlines()) == 1
  code, err = convert("--to=hf", f"--input={tmp_path}")
  assert code == 1 and "config.gin not found" in err
  with pytest.raises(SystemExit):
    cli_main.main(["convert", "--output=x"])  # neither --from nor --to
  assert not (tmp_path / "never").exists()
