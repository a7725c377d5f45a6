"""``palix train`` / ``palix infer`` on the tiny PaLI-X (gin/models/palix/palix_tiny.gin) with the
in-memory synthetic task: the trainer serves the real model through the same contract."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))

import subprocesses  # noqa: E402

EXPERIMENT_GIN = str(subprocesses.TESTS_TRAINING / "synthetic_experiment.gin")
MODEL_GIN = "models/palix/palix_tiny.gin"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("palix_tiny")
  args = ["-m", "palix.cli.main", "train", f"--gin_file={MODEL_GIN}",
          "--gin_file=runs/pretrain.gin", f"--gin_file={EXPERIMENT_GIN}", "--gin.TRAIN_STEPS=8",
          "--gin.BATCH_SIZE=8", f"--gin.MODEL_DIR='{root / 'run'}'",
          "--gin.trainer.train.checkpoint_period=8", "--gin.trainer.train.log_period=2"]
  proc = subprocesses.start(args, root / "train.log", subprocesses.env(1))
  code = subprocesses.wait_all([proc], 900)[0]
  assert code == 0, subprocesses.tail(root / "train.log")
  return root


def test_palix_tiny_trains_and_its_loss_falls(trained):
  log = [json.loads(line) for line in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [2, 4, 6, 8]
  assert log[-1]["loss"] < 0.8 * log[0]["loss"], [r["loss"] for r in log]
  assert (trained / "run" / "checkpoints" / "8" / "state").is_dir()
  assert "PaliXModel" in (trained / "run" / "config.gin").read_text()


@pytest.mark.slow
def test_palix_tiny_infer_from_its_checkpoint(trained):
  out = trained / "infer"
  args = ["-m", "palix.cli.main", "infer", f"--gin_file={MODEL_GIN}", "--gin_file=runs/infer.gin",
          f"--gin_file={EXPERIMENT_GIN}", "--gin.BATCH_SIZE=8", "--gin.PaliXModel.max_target_len=4",
          f"--gin.CHECKPOINT_PATH='{trained / 'run'}'", f"--gin.INFER_OUTPUT_DIR='{out}'",
          "--gin.infer.infer.max_batches=1"]
  proc = subprocesses.start(args, trained / "infer.log", subprocesses.env(1))
  assert subprocesses.wait_all([proc], 900)[0] == 0, subprocesses.tail(trained / "infer.log")
  records = [json.loads(l) for l in (out / "synthetic_brightness-validation.jsonl").open()]
  assert [r["index"] for r in records] == list(range(8))
  for r in records:
    assert r["prediction"] and all(isinstance(t, int) for t in r["prediction"])
    assert len(r["prediction"]) <= 4 and r["score"] <= 0
