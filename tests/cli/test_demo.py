"""``palix demo`` (``make demo``), shortened: the same train -> eval -> table -> report path."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from palix.cli import demo

REPO = pathlib.Path(__file__).resolve().parents[2]


def _demo(model_dir, *extra):
  return subprocess.run(
      [sys.executable, "-m", "palix.cli.main", "demo", f"--model_dir={model_dir}", "--steps=2",
       "--max_eval_examples=2", *extra],
      capture_output=True, text=True, cwd=REPO, check=False, timeout=1200)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("demo") / "run"
  result = _demo(model_dir)
  assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
  return model_dir, result


def test_shortened_demo_prints_the_table_and_writes_the_report(first_run):
  model_dir, result = first_run
  out = result.stdout
  assert "# palix demo results" in out
  metrics = json.loads((model_dir / "eval" / "metrics.json").read_text())
  # Every headline metric of the mixture's tasks is in the table with its measured value.
  for task, metric, label, _ in demo.HEADLINE:
    if task in metrics:
      row = next(line for line in out.splitlines() if line.startswith(f"| {label} |"))
      assert float(row.split("|")[2]) == pytest.approx(metrics[task][metric], abs=1e-4)
  for task in ("easy_vqa", "shapes_detection", "moving_shapes_vqa", "easy_vqa_caption"):
    assert task in metrics and metrics[task]["num_examples"] == 2
  report = model_dir / "eval" / "report.html"
  assert f"report: {model_dir / 'eval'}/report.html" in out and report.is_file()
  images = re.findall(r'<img src="([^"]+)"', report.read_text())
  assert images and all((report.parent / src).is_file() for src in images)
  assert (model_dir / "config.gin").is_file()  # the final gin config beside the checkpoint
  assert re.search(r"peak memory \d+ MiB", out)
  # training ran on packed batches: the printed fill is that of the trainer's token counts
  assert re.search(r"packing efficiency \(non-pad tokens of training\): ViT \d+\.\d%, "
                   r"encoder \d+\.\d%, decoder \d+\.\d%", out), out[-2000:]


@pytest.mark.slow  # 1-1.5 min; killed-and-resumed training is tested in tests/cli/test_train_cli.py
def test_rerunning_the_demo_resumes_instead_of_starting_over(first_run):
  model_dir, _ = first_run
  # One task to evaluate: the point is the training step, and each task's decoder compiles anew.
  again = _demo(model_dir, "--max_eval_examples=1", "--gin.MIXTURE_OR_TASK_NAME='easy_vqa'")
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"resumed from .* at step 2", again.stderr), again.stderr[-3000:]


def test_headline_table_marks_targets():
  rows = demo.headline_table({"easy_vqa": {"vqa_accuracy": 97.5},
                              "shapes_detection": {"mAP_50": 0.25}})
  assert rows[2] == "| easy-VQA test VQA accuracy (%) | 97.5 | >= 97 (met) |"
  assert rows[3] == "| detection mAP@0.5 | 0.25 | >= 0.5 (missed) |"
  assert len(rows) == 4  # absent tasks are left out, not shown as zero


def test_packing_efficiency_adds_up_the_logged_periods(tmp_path):
  path = tmp_path / "metrics.jsonl"
  periods = [{"step": 50, "num_vit_tokens": 90.0, "num_vit_capacity": 100.0,
              "num_encoder_tokens": 150.0, "num_encoder_capacity": 200.0,
              "num_decoder_tokens": 10.0, "num_decoder_capacity": 40.0},
             {"step": 100, "num_vit_tokens": 70.0, "num_vit_capacity": 100.0,
              "num_encoder_tokens": 170.0, "num_encoder_capacity": 200.0,
              "num_decoder_tokens": 30.0, "num_decoder_capacity": 40.0}]
  path.write_text("".join(json.dumps(p) + "\n" for p in periods))
  assert demo.packing_efficiency(str(path)) == (
      "packing efficiency (non-pad tokens of training): ViT 80.0%, encoder 80.0%, decoder 50.0%")
  assert demo.packing_efficiency(str(tmp_path / "absent.jsonl")) is None


def test_training_and_evaluation_bindings_reach_only_their_step():
  both, train, evaluate = demo.route_bindings(
      ["trainer.train.log_period=5", "schedules.cosine.warmup_steps=10", "IMAGE_SIZE=32",
       "evaluator.evaluate.batch_size=8", "T5Config.dropout_rate=0.1"])
  assert both == ["--gin.IMAGE_SIZE=32", "--gin.T5Config.dropout_rate=0.1"]
  assert train == ["--gin.trainer.train.log_period=5", "--gin.schedules.cosine.warmup_steps=10"]
  assert evaluate == ["--gin.evaluator.evaluate.batch_size=8"]
