"""``palix demo`` (``make demo``): train the tiny PaLI-X on the embedded mixture, evaluate, report.

Two steps, each the real command in a subprocess (so each gets a fresh gin config):

1. ``palix train`` with ``gin/experiments/demo_{model,train}.gin`` into ``runs/demo``. The trainer
   restores the latest checkpoint, so an interrupted demo resumes instead of starting over.
2. ``palix eval`` with ``gin/experiments/demo_{model,eval}.gin`` on the test splits, which prints
   the metrics table and writes ``runs/demo/eval/report.html``.

``--steps`` and ``--max_eval_examples`` shorten it (the test suite runs a few steps of the same
path); extra ``--gin.NAME=VALUE`` flags reach both steps.
"""

import argparse
import resource
import subprocess
import sys
import time

from palix import config as palix_config


def _run(step: str, args) -> None:
  command = [sys.executable, "-m", "palix.cli.main", step] + args
  print(f"\n$ palix {step} " + " ".join(args), flush=True)
  code = subprocess.call(command)
  if code:
    raise SystemExit(f"palix demo: `palix {step}` failed with exit code {code}")


def run(argv):
  bindings, rest = palix_config.split_gin_bindings(argv)
  parser = argparse.ArgumentParser(prog="palix demo", description=__doc__.splitlines()[0])
  parser.add_argument("--model_dir", default="runs/demo")
  parser.add_argument("--steps", type=int, default=None, help="training steps (default: gin)")
  parser.add_argument("--max_eval_examples", type=int, default=None,
                      help="test examples per task (default: gin)")
  args = parser.parse_args(rest)
  common = [f"--gin.{b}" for b in bindings]
  # The run file goes first so that the experiment files set its REQUIRED macros.
  train = ["--gin_file=runs/pretrain.gin", "--gin_file=experiments/demo_model.gin",
           "--gin_file=experiments/demo_train.gin", f"--gin.MODEL_DIR='{args.model_dir}'"]
  if args.steps is not None:
    train.append(f"--gin.TRAIN_STEPS={args.steps}")
  evaluate = ["--gin_file=runs/eval_benchmarks.gin", "--gin_file=experiments/demo_model.gin",
              "--gin_file=experiments/demo_eval.gin", f"--gin.CHECKPOINT_PATH='{args.model_dir}'",
              f"--gin.EVAL_OUTPUT_DIR='{args.model_dir}/eval'"]
  if args.max_eval_examples is not None:
    evaluate.append(f"--gin.MAX_EVAL_EXAMPLES={args.max_eval_examples}")
  start = time.time()
  _run("train", train + common)
  trained = time.time()
  _run("eval", evaluate + common)
  peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  print(f"\npalix demo: trained in {trained - start:.0f} s, evaluated in "
        f"{time.time() - trained:.0f} s; peak memory of one step {peak_mib:.0f} MiB")
  print(f"report: {args.model_dir}/eval/report.html")
  return 0
