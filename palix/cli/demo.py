"""``palix demo`` (``make demo``): train the tiny PaLI-X on the embedded mixture, evaluate, report.

Two steps, each the real command in a subprocess (so each gets a fresh gin config):

1. ``palix train`` with ``gin/experiments/demo_{model,train}.gin`` into ``out/demo``. The trainer
   restores the latest checkpoint, so an interrupted demo resumes instead of starting over.
2. ``palix eval`` with ``gin/experiments/demo_{model,eval}.gin`` on the test splits, which prints
   the metrics table and writes ``out/demo/eval/report.html``.

``--steps`` and ``--max_eval_examples`` shorten it (the test suite runs a few steps of the same
path); extra ``--gin.NAME=VALUE`` flags reach both steps.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from palix import config as palix_config

TRAIN_ONLY_PREFIXES = ("trainer.", "optimizers.", "schedules.", "palix.training.trainer.",
                       "palix.training.optimizers.", "palix.training.schedules.")
EVAL_ONLY_PREFIXES = ("evaluator.", "palix.eval.evaluator.")

# The demo's headline results: (task, metric, what it is, target from issue #8 or None). The full
# table (every metric of every task) is printed by `palix eval` above it.
HEADLINE: Tuple[Tuple[str, str, str, Optional[float]], ...] = (
    ("easy_vqa", "vqa_accuracy", "easy-VQA test VQA accuracy (%)", 97.0),
    ("shapes_detection", "mAP_50", "detection mAP@0.5", 0.5),
    ("moving_shapes_vqa", "exact_match", "video QA accuracy", 0.9),
    ("easy_vqa_caption", "CIDEr", "easy-VQA captions CIDEr", None),
    ("moving_shapes_caption", "CIDEr", "video captions CIDEr", None),
    ("fashion_mnist_caption", "exact_match", "Fashion-MNIST caption exact match", None),
    ("shape_names_3shot", "exact_match", "few-shot: remapped shape names, 3-shot", None),
    ("shape_names_0shot", "exact_match", "few-shot: the same queries, 0-shot", None),
)


def route_bindings(bindings: List[str]) -> Tuple[List[str], List[str], List[str]]:
  """``--gin.`` flags for both steps, for `palix train` only and for `palix eval` only: each step
  imports only its own modules, so gin would reject the other step's configurables."""
  flag = lambda b: f"--gin.{b}"
  train = [flag(b) for b in bindings if b.startswith(TRAIN_ONLY_PREFIXES)]
  evaluate = [flag(b) for b in bindings if b.startswith(EVAL_ONLY_PREFIXES)]
  both = [flag(b) for b in bindings if not b.startswith(TRAIN_ONLY_PREFIXES + EVAL_ONLY_PREFIXES)]
  return both, train, evaluate


def headline_table(metrics: Dict[str, Dict[str, float]]) -> List[str]:
  """Markdown rows of the headline results present in ``metrics`` (``palix eval``'s JSON)."""
  rows = ["| result | value | target |", "|---|---|---|"]
  for task, metric, label, target in HEADLINE:
    value = metrics.get(task, {}).get(metric)
    if value is None:
      continue
    verdict = "" if target is None else f">= {target:g} ({'met' if value >= target else 'missed'})"
    rows.append(f"| {label} | {value:.4g} | {verdict} |")
  return rows


SEQUENCES = (("vit", "ViT"), ("encoder", "encoder"), ("decoder", "decoder"))


def packing_efficiency(metrics_path: str) -> Optional[str]:
  """The non-pad share of the ViT, encoder and decoder tokens that training computed on, from
  the trainer's ``metrics.jsonl`` (``PaliXModel.token_counts``: the period averages of
  ``num_<sequence>_tokens`` over ``num_<sequence>_capacity``), or None without them."""
  if not os.path.isfile(metrics_path):
    return None
  tokens = {name: 0.0 for name, _ in SEQUENCES}
  capacity = dict(tokens)
  with open(metrics_path) as f:
    for line in f:
      record = json.loads(line)
      for name, _ in SEQUENCES:
        tokens[name] += record.get(f"num_{name}_tokens", 0.0)
        capacity[name] += record.get(f"num_{name}_capacity", 0.0)
  if not all(capacity.values()):
    return None
  return "packing efficiency (non-pad tokens of training): " + ", ".join(
      f"{label} {100 * tokens[name] / capacity[name]:.1f}%" for name, label in SEQUENCES)


def few_shot_showcase(predictions_dir: str) -> List[str]:
  """One remapped-label episode: its prompt, the 3-shot answer and the 0-shot answer."""
  paths = [os.path.join(predictions_dir, f"shape_names_{k}shot.jsonl") for k in (3, 0)]
  if not all(os.path.isfile(p) for p in paths):
    return []
  with open(paths[0]) as few, open(paths[1]) as zero:
    shot, alone = json.loads(few.readline()), json.loads(zero.readline())
  return [f"few-shot prompt (4 images: 3 named shapes, then the query): {shot['prompt']!r}",
          f"  3-shot answer: {shot['prediction']!r}   0-shot answer: {alone['prediction']!r}   "
          f"target: {shot['target']!r}"]


def _run(step: str, args) -> None:
  command = [sys.executable, "-m", "palix.cli.main", step] + args
  print(f"\n$ palix {step} " + " ".join(args), flush=True)
  code = subprocess.call(command)
  if code:
    raise SystemExit(f"palix demo: `palix {step}` failed with exit code {code}")


def run(argv):
  bindings, rest = palix_config.split_gin_bindings(argv)
  parser = argparse.ArgumentParser(prog="palix demo", description=__doc__.splitlines()[0])
  # Not under runs/: a folder runs/ in the current folder would shadow gin's include 'runs/...'.
  parser.add_argument("--model_dir", default="out/demo")
  parser.add_argument("--steps", type=int, default=None, help="training steps (default: gin)")
  parser.add_argument("--max_eval_examples", type=int, default=None,
                      help="test examples per task (default: gin)")
  args = parser.parse_args(rest)
  common, train_only, eval_only = route_bindings(bindings)
  # The run file goes first so that the experiment files set its REQUIRED macros.
  train = ["--gin_file=runs/pretrain.gin", "--gin_file=experiments/demo_model.gin",
           "--gin_file=experiments/demo_train.gin", f"--gin.MODEL_DIR='{args.model_dir}'"]
  if args.steps is not None:
    train.append(f"--gin.TRAIN_STEPS={args.steps}")
  evaluate = ["--gin_file=runs/eval.gin", "--gin_file=experiments/demo_model.gin",
              "--gin_file=experiments/demo_eval.gin", f"--gin.CHECKPOINT_PATH='{args.model_dir}'",
              f"--gin.EVAL_OUTPUT_DIR='{args.model_dir}/eval'"]
  if args.max_eval_examples is not None:
    evaluate.append(f"--gin.MAX_EVAL_EXAMPLES={args.max_eval_examples}")
  start = time.time()
  _run("train", train + common + train_only)
  trained = time.time()
  _run("eval", evaluate + common + eval_only)
  peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  eval_dir = os.path.join(args.model_dir, "eval")
  with open(os.path.join(eval_dir, "metrics.json")) as f:
    metrics = json.load(f)
  print("\n# palix demo results\n")
  print("\n".join(headline_table(metrics)))
  showcase = few_shot_showcase(os.path.join(eval_dir, "predictions"))
  if showcase:
    print("\n" + "\n".join(showcase))
  efficiency = packing_efficiency(os.path.join(args.model_dir, "metrics.jsonl"))
  if efficiency:
    print("\n" + efficiency)
  print(f"\ntrained in {trained - start:.0f} s, evaluated in {time.time() - trained:.0f} s; "
        f"peak memory {peak_mib:.0f} MiB (largest process)")
  print(f"report: {eval_dir}/report.html")
  return 0
