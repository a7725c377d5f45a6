"""The documented classifier and NaViT commands run: ``palix train`` for a few steps, then
``palix infer`` with the teacher-forced run file on the checkpoint (slow: TensorFlow, compiles)."""

import json

import gin
import pytest

from palix.cli import main as cli_main

COMMANDS = {
    "classifier": ("models/classifier/classifier_tiny.gin",
                   "experiments/classifier_fashion_mnist.gin"),
    "navit": ("models/classifier/navit_tiny.gin", "experiments/navit_fashion_canvas.gin"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_train_then_evaluate(name, tmp_path):
  model_gin, experiment_gin = COMMANDS[name]
  model_dir = tmp_path / "run"
  gin.clear_config()
  try:
    assert cli_main.main([
        "train", f"--gin_file={model_gin}", "--gin_file=runs/pretrain.gin",
        f"--gin_file={experiment_gin}", f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4",
        "--gin.schedules.cosine.warmup_steps=1", "--gin.trainer.train.progress_bar=False"]) == 0
    gin.clear_config()
    assert cli_main.main([
        "infer", f"--gin_file={model_gin}", "--gin_file=runs/eval_teacher_forced.gin",
        f"--gin_file={experiment_gin}", f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoints'}'",
        f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'",
        "--gin.teacher_forced.evaluate_teacher_forced.max_batches=2"]) == 0
  finally:
    gin.clear_config()
  metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
  assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
  # Two batches of real images: 2 x 64 square images, or the images of 2 x 16 packed rows.
  assert metrics["num_examples"] == 128 if name == "classifier" else metrics["num_examples"] > 32
