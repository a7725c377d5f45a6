"""LoRA against full fine-tuning: the demo PaLI-X, pretrained on easy-VQA captions, tuned on the
questions.

    python -m palix.eval.experiments.lora_easy_vqa [--seeds 0 1 2] [--steps 600]
        [--eval_examples 1000] [--base out/lora_easy_vqa/base] [--arms full lora]
        [--lr ARM=RATE ...] [--append]

1. The base model (``experiments/lora_easy_vqa_base.gin``: the demo PaLI-X, 1500 steps of batch 32
   on easy-VQA captions, never a question) is trained into ``--base`` unless it is there.
2. For each seed, two fine-tunes from it on ``easy_vqa`` (``experiments/lora_easy_vqa.gin``: AdamW,
   cosine schedule, ``--steps`` steps of batch 32): every parameter (``runs/finetune.gin``, peak
   learning rate 3e-4) and rank-4 adapters on the text model's attention and MLP kernels
   (``runs/finetune_lora.gin`` + ``experiments/lora_easy_vqa_adapters.gin``, 3e-3). Each is
   ``palix train`` in-process with those files; ``SEED`` sets the data order (and the adapters'
   initialisation).
3. Each result (the LoRA one merged into the base) answers the first ``--eval_examples`` test
   questions with greedy decoding (``palix eval``'s ``evaluate_tasks``); the score is VQA
   accuracy (an easy-VQA question has one answer: exact match), also per answer type.

``--lr ARM=RATE`` overrides an arm's peak learning rate and ``--append`` adds the runs to the
CSVs already there (docs/lora.md's results: both arms, then full fine-tuning at 1e-3 and 1e-4).

Writes ``docs/results/lora_easy_vqa.csv`` (one row per run: accuracy, trained and total
parameters, the trainer's step time) and ``lora_easy_vqa_curves.csv`` (the logged training loss),
and draws ``docs/img/lora_easy_vqa.png``.
"""

import argparse
import json
import os
import tempfile
import time

import gin
import jax
import numpy as np

from palix import config as palix_config
from palix import model_stats
from palix.eval.experiments import result_files
from palix.training import lora as lora_training
from palix.training import trainer

RESULTS = os.path.join("docs", "results")
FIGURE = os.path.join("docs", "img", "lora_easy_vqa.png")
ARMS = {"full": ["runs/finetune.gin", "experiments/lora_easy_vqa.gin"],
        "lora": ["runs/finetune_lora.gin", "experiments/lora_easy_vqa.gin",
                 "experiments/lora_easy_vqa_adapters.gin"]}
LENGTHS = {"inputs": 16, "targets": 8}


def _train(gin_files, bindings):
  """``(trained model object, final params, process CPU seconds, wall seconds)``."""
  gin.clear_config()
  try:
    palix_config.parse_gin(gin_files, bindings + ["trainer.train.progress_bar = False",
                                                  "trainer.train.async_checkpointing = False"])
    model = gin.query_parameter("trainer.train.model").scoped_configurable_fn()
    cpu, wall = time.process_time(), time.time()
    state = trainer.train()
    return model, jax.device_get(state.params), time.process_time() - cpu, time.time() - wall
  finally:
    gin.clear_config()


def train_base(base_dir: str) -> None:
  if os.path.isdir(os.path.join(base_dir, "checkpoints")):
    return
  _train(["runs/pretrain.gin", "experiments/lora_easy_vqa_base.gin"], [f"MODEL_DIR = '{base_dir}'"])


SHAPES = ("circle", "rectangle", "triangle")


def question_kind(answer: str) -> str:
  """easy-VQA's three kinds of question, told apart by their answer."""
  return "yes_no" if answer in ("yes", "no") else "shape" if answer in SHAPES else "colour"


def evaluate(model, params, max_examples: int):
  """VQA accuracy (%) overall and per kind of question on the first test questions."""
  from palix.eval import evaluator  # pylint: disable=g-import-not-at-top  # TensorFlow data
  results = evaluator.evaluate_tasks(model, params, "easy_vqa", split="test",
                                     task_feature_lengths=LENGTHS, batch_size=250, image_size=32,
                                     max_examples=max_examples, num_report_samples=0,
                                     progress=False)
  scored = results["easy_vqa"].scored
  metrics = {"vqa_accuracy": float(scored.metrics["vqa_accuracy"]),
             "num_examples": len(scored.predictions)}
  kinds = {}
  for target, prediction in zip(scored.targets, scored.predictions):
    answer = (target["answers"] if isinstance(target, dict) else target)[0]
    kinds.setdefault(question_kind(answer), []).append(prediction.strip() == answer)
  for kind, hits in sorted(kinds.items()):
    metrics[f"acc_{kind}"] = 100.0 * float(np.mean(hits))
    metrics[f"n_{kind}"] = len(hits)
  return metrics


def run(arm: str, seed: int, steps: int, base_dir: str, eval_examples: int, model_dir: str,
        learning_rate=None):
  bindings = [f"MODEL_DIR = '{model_dir}'", f"SEED = {seed}", f"TRAIN_STEPS = {steps}",
              f"INITIAL_CHECKPOINT_PATH = '{base_dir}'"]
  if learning_rate is not None:
    bindings.append(f"schedules.cosine.base_learning_rate = {learning_rate}")
  model, params, cpu, wall = _train(ARMS[arm], bindings)
  if isinstance(model, lora_training.LoraModel):
    trained = model_stats.count_params(params[lora_training.ADAPTERS])
    total = model_stats.count_params(params)
    eval_model, eval_params = model.base, jax.device_get(model.merged(params))
  else:
    trained = total = model_stats.count_params(params)
    eval_model, eval_params = model, params
  metrics = evaluate(eval_model, eval_params, eval_examples)
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  step_times = [r["step_time_s"] for r in logged[1:] if "step_time_s" in r]  # after compiling
  row = {"arm": arm, "seed": seed, "steps": steps,
         "learning_rate": learning_rate or gin_learning_rate(arm),
         **{k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items()},
         "trained_params": trained, "total_params": total,
         "trained_fraction": round(trained / total, 4),
         "step_time_ms_median": round(1000 * float(np.median(step_times)), 1) if step_times else "",
         "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
         "final_train_loss": round(logged[-1]["loss"], 4)}
  curve = [{"arm": arm, "seed": seed, "learning_rate": row["learning_rate"], "step": r["step"],
            "loss": round(r["loss"], 4)} for r in logged]
  return row, curve


def gin_learning_rate(arm: str) -> float:
  """The peak learning rate the arm's gin files set."""
  gin.clear_config()
  try:
    palix_config.parse_gin(ARMS[arm], [], finalize=False)
    return float(gin.query_parameter("schedules.cosine.base_learning_rate"))
  finally:
    gin.clear_config()


def settings(rows):
  """The (arm, peak learning rate) pairs of the rows, full fine-tuning first."""
  return sorted({(r["arm"], float(r["learning_rate"])) for r in rows},
                key=lambda s: (list(ARMS).index(s[0]), -s[1]))


def plot(rows, curves, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  arms = settings(rows)
  fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
  names = []
  for i, (arm, rate) in enumerate(arms):
    name = f"{arm}, lr {rate:g}"
    ours = [r for r in rows if r["arm"] == arm and float(r["learning_rate"]) == rate]
    names.append(f"{name}\n({100 * ours[0]['trained_fraction']:.1f}% trained)")
    accs = [r["vqa_accuracy"] for r in ours]
    ours = [c for c in curves if c["arm"] == arm and float(c["learning_rate"]) == rate]
    for j, seed in enumerate(sorted({c["seed"] for c in ours})):
      pts = [c for c in ours if c["seed"] == seed]
      ax.plot([c["step"] for c in pts], [c["loss"] for c in pts], color=cycle[i], alpha=0.8,
              label=name if j == 0 else None)
    ax_acc.scatter([i] * len(accs), accs, color=cycle[i])
    ax_acc.errorbar([i + 0.15], [np.mean(accs)], yerr=[np.std(accs, ddof=1) if len(accs) > 1
                                                       else 0], fmt="o", color="k", capsize=3)
  ax.set(xlabel="fine-tuning step", ylabel="training loss (logged averages)", yscale="log",
         title="easy-VQA questions from a caption-trained base")
  ax.legend()
  ax_acc.set(xticks=range(len(arms)), xticklabels=names,
             ylabel="test VQA accuracy (%)", title="per seed, mean ± std")
  fig.tight_layout()
  result_files.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--eval_examples", type=int, default=1000)
  parser.add_argument("--base", default=os.path.join("out", "lora_easy_vqa", "base"))
  parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
  parser.add_argument("--lr", nargs="*", default=[], metavar="ARM=RATE",
                      help="override an arm's peak learning rate (e.g. lora=1e-3)")
  parser.add_argument("--append", action="store_true",
                      help="add to the rows and curves already in --results (another setting)")
  parser.add_argument("--results", default=RESULTS)
  parser.add_argument("--figure", default=FIGURE)
  args = parser.parse_args(argv)
  learning_rates = {arm: float(rate) for arm, rate in (o.split("=", 1) for o in args.lr)}
  train_base(args.base)
  rows_csv = os.path.join(args.results, "lora_easy_vqa.csv")
  curves_csv = os.path.join(args.results, "lora_easy_vqa_curves.csv")
  rows, curves = ([], []) if not args.append else (result_files.read_csv(rows_csv),
                                                    result_files.read_csv(curves_csv))
  for seed in args.seeds:
    for arm in args.arms:
      with tempfile.TemporaryDirectory() as model_dir:
        row, curve = run(arm, seed, args.steps, os.path.abspath(args.base), args.eval_examples,
                         model_dir, learning_rates.get(arm))
      rows.append(row)
      curves += curve
      print(row, flush=True)
      result_files.write_csv(rows_csv, rows)
      result_files.write_csv(curves_csv, curves)
  for arm, rate in settings(rows):
    ours = [r for r in rows if r["arm"] == arm and float(r["learning_rate"]) == rate]
    print(f"{arm}, learning rate {rate:g}: VQA accuracy "
          f"{result_files.mean_and_std([r['vqa_accuracy'] for r in ours], 2)} over seeds "
          f"{sorted(r['seed'] for r in ours)}")
  plot(rows, curves, args.figure)


if __name__ == "__main__":
  main()
