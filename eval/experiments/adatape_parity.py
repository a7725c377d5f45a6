"""Parity: a standard Transformer against its AdaTape version (same width, depth and steps).

    python -m palix.eval.experiments.adatape_parity [--seeds 0 1 2] [--steps 1200] [--quick]
        [--arms standard adatape] [--name adatape_parity]

Each run is ``palix train`` in-process: ``gin/models/parity/parity_tiny.gin`` (standard) or
``parity_adatape_tiny.gin`` (the same model plus the tape), ``runs/pretrain.gin`` and
``experiments/adatape_parity.gin`` (lengths 10, 13 and 16 in equal parts, batch 64, AdamW at
1e-3 with a cosine schedule), with ``SEED`` set per run (initialisation and the training
stream). Afterwards the model is tested on 2048 held-out examples (the ``test`` stream, the same
for every run). Writes ``docs/results/adatape_parity.csv`` (one row per run),
``adatape_parity_curves.csv`` (the trainer's logged metrics: every training example is fresh, so
the logged accuracy is on unseen examples) and ``adatape_parity_tape.csv`` (AdaTape's mean tape
tokens on the test set by sequence length and number of one bits), then draws
``docs/img/adatape_parity.png``. ``--name`` renames these files (``--arms`` runs a subset; the
figure needs both arms).
"""

import argparse
import collections
import json
import os
import tempfile
import time

import gin
import jax
import numpy as np

from palix import config as palix_config
from palix.eval.experiments import result_files
from palix.tasks.sources.parity import ONE, PAD, parity_batches
from palix.training import trainer

ARMS = {"standard": "models/parity/parity_tiny.gin",
        "adatape": "models/parity/parity_adatape_tiny.gin"}
RESULTS = os.path.join("docs", "results")
FIGURES = os.path.join("docs", "img")
TEST_EXAMPLES = 2048


def train_run(arm: str, seed: int, steps: int, model_dir: str):
  """``(model, params, cpu_seconds)`` of one ``palix train`` run."""
  gin.clear_config()
  try:
    palix_config.parse_gin(
        [ARMS[arm], "runs/pretrain.gin", "experiments/adatape_parity.gin"],
        [f"MODEL_DIR = '{model_dir}'", f"SEED = {seed}", f"TRAIN_STEPS = {steps}",
         "trainer.train.progress_bar = False", "trainer.train.async_checkpointing = False"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    lengths = gin.query_parameter("parity.parity_batches.lengths")
    cpu = time.process_time()
    state = trainer.train()
    return model, jax.device_get(state.params), time.process_time() - cpu, tuple(lengths)
  finally:
    gin.clear_config()


def test_predictions(model, params, lengths):
  """Per test example: length, number of ones, label, prediction, tape tokens (0 without)."""
  predict = jax.jit(model.predict_batch_with_aux)
  rows = []
  for batch in parity_batches("parity", split="test", batch_size=256, repeat=False,
                              num_examples=TEST_EXAMPLES, lengths=lengths,
                              feature_lengths={"inputs": model.config.max_length}):
    predictions, aux = jax.device_get(predict(params, batch))
    tape = aux.get("tape_tokens_used", np.zeros_like(predictions))
    for inputs, label, prediction, used in zip(batch["inputs"], batch["labels"], predictions,
                                               tape):
      rows.append(((inputs != PAD).sum(), (inputs == ONE).sum(), label, prediction, used))
  return np.asarray(rows, np.int64)


def plot(curves, runs, tape_rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax, ax_tape) = plt.subplots(1, 2, figsize=(11, 4))
  colors = {"standard": "tab:gray", "adatape": "tab:blue"}
  for arm in ARMS:
    for seed in sorted({r["seed"] for r in curves if r["arm"] == arm}):
      pts = [r for r in curves if r["arm"] == arm and r["seed"] == seed]
      ax.plot([r["step"] for r in pts], [r["accuracy"] for r in pts], color=colors[arm],
              alpha=0.8, label=arm if seed == min(r["seed"] for r in runs) else None)
  for arm in ARMS:
    accs = [r["test_accuracy"] for r in runs if r["arm"] == arm]
    ax.axhline(np.mean(accs), color=colors[arm], ls=":", lw=1)
  ax.axhline(0.5, color="k", lw=0.5)
  ax.set(xlabel="training step", ylabel="accuracy on fresh training examples",
         title="Parity of 10/13/16 bits (dotted: mean test accuracy)", ylim=(0.3, 1.02))
  ax.legend()
  for length in sorted({r["length"] for r in tape_rows}):
    pts = sorted((r for r in tape_rows if r["length"] == length), key=lambda r: r["ones"])
    ax_tape.errorbar([r["ones"] for r in pts], [r["tape_tokens_mean"] for r in pts],
                     yerr=[r["tape_tokens_std"] for r in pts], marker="o", capsize=2,
                     label=f"length {length}")
  ax_tape.set(xlabel="number of one bits", ylabel="tape tokens used (test, all seeds)",
              title="AdaTape: tape tokens per example")
  ax_tape.legend()
  fig.tight_layout()
  result_files.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=1200)
  parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
  parser.add_argument("--name", default="adatape_parity", help="prefix of the output files")
  parser.add_argument("--results", default=RESULTS)
  parser.add_argument("--figures", default=FIGURES)
  parser.add_argument("--quick", action="store_true", help="60 steps, one seed (a smoke run)")
  args = parser.parse_args(argv)
  if args.quick:
    args.seeds, args.steps = args.seeds[:1], 60
  runs, curves, tape = [], [], collections.defaultdict(list)
  for seed in args.seeds:
    for arm in args.arms:
      with tempfile.TemporaryDirectory() as model_dir:
        model, params, cpu, lengths = train_run(arm, seed, args.steps, model_dir)
        with open(os.path.join(model_dir, "metrics.jsonl")) as f:
          logged = [json.loads(line) for line in f]
      test = test_predictions(model, params, lengths)
      length, ones, label, prediction, used = test.T
      runs.append({"arm": arm, "seed": seed, "steps": args.steps,
                   "test_accuracy": round(float(np.mean(label == prediction)), 4),
                   "final_train_accuracy": round(logged[-1]["accuracy"], 4),
                   "test_tape_tokens_mean": round(float(used.mean()), 3),
                   "train_cpu_s": round(cpu, 1)})
      curves += [{"arm": arm, "seed": seed, "step": r["step"],
                  "accuracy": round(r["accuracy"], 4), "loss": round(r["loss"], 4),
                  "tape_tokens_mean": round(r.get("tape_tokens_mean", 0.0), 3)} for r in logged]
      if arm == "adatape":
        for n, k, u in zip(length, ones, used):
          tape[(int(n), int(k))].append(int(u))
      print(runs[-1], flush=True)
  tape_rows = [{"length": n, "ones": k, "examples": len(u),
                "tape_tokens_mean": round(float(np.mean(u)), 3),
                "tape_tokens_std": round(float(np.std(u)), 3)}
               for (n, k), u in sorted(tape.items())]
  result_files.write_csv(os.path.join(args.results, f"{args.name}.csv"), runs)
  result_files.write_csv(os.path.join(args.results, f"{args.name}_curves.csv"), curves)
  if tape_rows:
    result_files.write_csv(os.path.join(args.results, f"{args.name}_tape.csv"), tape_rows)
  if set(args.arms) == set(ARMS):
    plot(curves, runs, tape_rows, os.path.join(args.figures, f"{args.name}.png"))
  for arm in args.arms:
    accs = [r["test_accuracy"] for r in runs if r["arm"] == arm]
    cpu = [r["train_cpu_s"] for r in runs if r["arm"] == arm]
    print(f"{arm}: test accuracy {result_files.mean_and_std(accs, 3)} over {len(accs)} seeds "
          f"(min {min(accs):.3f}, max {max(accs):.3f}); train CPU {np.mean(cpu):.0f} s per run")
  print(f"wrote {args.results}/{args.name}*.csv")


if __name__ == "__main__":
  main()
