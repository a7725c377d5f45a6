"""``palix train`` with ``experiments/sparsity_*.gin`` on the trainer's tiny model: the gin route
prunes, and ``palix params --checkpoint`` reports the exact non-zero count."""

import math

import gin
import jax
import pytest

import subprocesses
import tiny_trainable_model as tiny
from palix import model_stats
from palix.cli import main as cli_main

MODEL_GIN = str(subprocesses.TESTS_TRAINING / "tiny_model.gin")
EXPERIMENT_GIN = str(subprocesses.TESTS_TRAINING / "synthetic_experiment.gin")


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _shapes():
  model = tiny.TinyModel()
  return model_stats.param_shapes(model.module, model.example_inputs(1))


@pytest.mark.parametrize("gin_file, extra, zeros_of", [
    ("experiments/sparsity_gmp.gin", ["--gin.SPARSITY=0.5"],
     lambda size: round(0.5 * size)),
    pytest.param("experiments/sparsity_2_4.gin", [], lambda size: size // 2,
                 marks=pytest.mark.slow),
])
def test_palix_train_prunes_through_gin(tmp_path, capsys, gin_file, extra, zeros_of):
  model_dir = tmp_path / "run"
  assert cli_main.main([
      "train", f"--gin_file={MODEL_GIN}", "--gin_file=runs/pretrain.gin",
      f"--gin_file={EXPERIMENT_GIN}", f"--gin_file={gin_file}", "--gin.TRAIN_STEPS=8",
      "--gin.BATCH_SIZE=8", f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.trainer.train.checkpoint_period=8", "--gin.sparsity.GradualSchedule.update_every=1",
      "--gin.trainer.train.progress_bar=False", *extra]) == 0
  gin.clear_config()
  capsys.readouterr()
  assert cli_main.main(["params", f"--checkpoint={model_dir / 'checkpoints'}"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  shapes = [x.shape for x in jax.tree.leaves(_shapes())]
  total = sum(math.prod(s) for s in shapes)
  zeros = sum(zeros_of(math.prod(s)) for s in shapes if len(s) >= 2)
  assert lines[-1] == f"total_params: {total}"
  assert lines[-2] == f"nonzero_params: {total - zeros}"
