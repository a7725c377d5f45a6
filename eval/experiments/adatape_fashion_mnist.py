"""Elastic compute on images: the tiny ViT classifier with and without an AdaTape tape on
Fashion-MNIST; accuracy, and where the tape spends its tokens.

    python -m palix.eval.experiments.adatape_fashion_mnist [--seeds 0 1 2] [--steps 1000] [--quick]
        [--gin BINDING ...] [--name adatape_fashion_mnist] [--plot]

Each run is ``palix train`` in-process: ``gin/models/classifier/classifier_tiny.gin`` (plain ViT:
width 64, 3 layers, 4 heads, patch 4 on 28 px, mean pooling) or ``classifier_adatape_tiny.gin``
(the same ViT plus the tape: input-driven bank of 2 px patches, up to 10 tape tokens of the
top-5 entries, threshold 2), with ``runs/pretrain.gin`` and
``experiments/classifier_fashion_mnist.gin`` (batch 64, AdamW 3e-3 cosine, clipping 1.0),
``SEED`` set per run. Every run is then tested on all 10,000 test images: per image, the
prediction, the loss ``-log p(label)`` and (AdaTape) the tape tokens used.

Writes to ``docs/results/``: ``adatape_fashion_mnist.csv`` (one row per run),
``adatape_fashion_mnist_classes.csv`` (per class: each arm's accuracy and the mean tape tokens,
mean and spread over seeds) and ``adatape_fashion_mnist_difficulty.csv`` (the test images in ten
equal bins of difficulty = the plain models' loss on the image, averaged over the plain seeds;
per bin and seed the mean tape tokens), and ``docs/img/adatape_fashion_mnist.png``. Prints the
Spearman correlation of tape tokens with difficulty per seed. ``--gin`` adds bindings to every
run (e.g. ``'AdaTapeConfig.ponder_loss_weight = 0.1'``), ``--name`` renames the output files.
"""

import argparse
import os
import tempfile
import time

import gin
import jax
import numpy as np
import scipy.stats

from palix import config as palix_config
from palix.eval.experiments import result_files
from palix.models.classifier import ImageClassifier
from palix.training import trainer

ARMS = {"plain": "models/classifier/classifier_tiny.gin",
        "adatape": "models/classifier/classifier_adatape_tiny.gin"}
TASK = "fashion_mnist_class"
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot")
RESULTS = os.path.join("docs", "results")
FIGURES = os.path.join("docs", "img")
BINS = 10


def train_run(arm: str, seed: int, steps: int, model_dir: str, bindings=()):
  """``(model, params, cpu_seconds)`` of one ``palix train`` run."""
  gin.clear_config()
  try:
    palix_config.parse_gin(
        [ARMS[arm], "runs/pretrain.gin", "experiments/classifier_fashion_mnist.gin"],
        [f"MODEL_DIR = '{model_dir}'", f"SEED = {seed}", f"TRAIN_STEPS = {steps}",
         "trainer.train.progress_bar = False", "trainer.train.async_checkpointing = False",
         *bindings])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    cpu = time.process_time()
    state = trainer.train()
    return model, jax.device_get(state.params), time.process_time() - cpu
  finally:
    gin.clear_config()


def test_per_image(model, params):
  """``(labels, predictions, losses, tape_tokens)`` over every test image (tape 0 when plain)."""
  from palix.tasks import class_batches  # pylint: disable=g-import-not-at-top  # TensorFlow

  @jax.jit
  def run(p, images):
    logits, out = model.module.apply({"params": p}, images,
                                     method=ImageClassifier.logits_and_out)
    logp = jax.nn.log_softmax(logits, -1)
    return logp, out.get("tape_tokens_used", jax.numpy.zeros(images.shape[:1], jax.numpy.int32))

  labels, predictions, losses, tape = [], [], [], []
  for batch in class_batches.get_class_batches(TASK, split="test", batch_size=500,
                                               image_size=model.image_size, shuffle=False,
                                               repeat=False):
    real = np.asarray(batch.get("image_mask", np.ones(len(batch["labels"])))) > 0
    logp, used = jax.device_get(run(params, model.single_images(batch["images"])))
    label = np.asarray(batch["labels"])
    labels.append(label[real])
    predictions.append(logp.argmax(-1)[real])
    losses.append(-logp[np.arange(len(label)), label][real])
    tape.append(used[real])
  return tuple(np.concatenate(x) for x in (labels, predictions, losses, tape))


def plot(class_rows, difficulty_rows, path):
  """Tape tokens per class (mean over seeds, whiskers: spread) and per difficulty bin and seed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_class, ax_diff) = plt.subplots(1, 2, figsize=(13, 4.2))
  x = np.arange(len(class_rows))
  means = np.array([float(r["tape_tokens_mean"]) for r in class_rows])
  spreads = np.array([float(r["tape_tokens_spread"]) for r in class_rows])
  ax_class.bar(x, means, yerr=spreads, capsize=4)
  ax_class.set_ylim(max(0.0, (means - spreads).min() - 0.3), (means + spreads).max() + 0.3)
  ax_class.set_xticks(x, [r["class"] for r in class_rows], rotation=40, ha="right")
  ax_class.set(ylabel="tape tokens used (mean over test images)",
               title="AdaTape tape tokens per class (bars: mean of seeds; whiskers: std)")
  for seed in sorted({int(r["seed"]) for r in difficulty_rows}):
    pts = sorted((r for r in difficulty_rows if int(r["seed"]) == seed), key=lambda r: int(r["bin"]))
    ax_diff.plot([int(r["bin"]) + 1 for r in pts], [float(r["tape_tokens_mean"]) for r in pts],
                 marker="o", label=f"seed {seed}")
  ax_diff.set(xlabel="difficulty decile (plain ViT's loss on the image; 10 = hardest)",
              ylabel="tape tokens used (mean in bin)",
              title="AdaTape tape tokens against difficulty")
  ax_diff.legend(loc="center right")
  fig.tight_layout()
  result_files.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--gin", nargs="*", default=[], help="extra gin bindings for every run")
  parser.add_argument("--name", default="adatape_fashion_mnist", help="output file prefix")
  parser.add_argument("--results", default=RESULTS)
  parser.add_argument("--figures", default=FIGURES)
  parser.add_argument("--quick", action="store_true", help="60 steps, one seed (a smoke run)")
  parser.add_argument("--plot", action="store_true",
                      help="only redraw the figure from the CSVs already written")
  args = parser.parse_args(argv)
  if args.plot:
    prefix = os.path.join(args.results, args.name)
    plot(result_files.read_csv(f"{prefix}_classes.csv"), result_files.read_csv(f"{prefix}_difficulty.csv"),
         os.path.join(args.figures, f"{args.name}.png"))
    print(f"wrote {args.figures}/{args.name}.png")
    return
  if args.quick:
    args.seeds, args.steps = args.seeds[:1], 60
  runs, tests = [], {}
  for seed in args.seeds:
    for arm in ARMS:
      with tempfile.TemporaryDirectory() as model_dir:
        model, params, cpu = train_run(arm, seed, args.steps, model_dir, args.gin)
      labels, predictions, losses, tape = tests[(arm, seed)] = test_per_image(model, params)
      runs.append({"arm": arm, "seed": seed, "steps": args.steps,
                   "test_accuracy": round(float(np.mean(labels == predictions)), 4),
                   "test_loss": round(float(losses.mean()), 4),
                   "tape_tokens_mean": round(float(tape.mean()), 3),
                   "tape_tokens_min": int(tape.min()), "tape_tokens_max": int(tape.max()),
                   "train_cpu_s": round(cpu, 1)})
      print(runs[-1], flush=True)
  labels = tests[("plain", args.seeds[0])][0]
  difficulty = np.mean([tests[("plain", s)][2] for s in args.seeds], axis=0)
  edges = np.quantile(difficulty, np.linspace(0, 1, BINS + 1))
  bins = np.clip(np.searchsorted(edges, difficulty, side="right") - 1, 0, BINS - 1)
  class_rows, difficulty_rows = [], []
  for c, name in enumerate(CLASS_NAMES):
    row = {"class": name}
    for arm in ARMS:
      acc = [np.mean(tests[(arm, s)][1][labels == c] == c) for s in args.seeds]
      row[f"{arm}_accuracy"], row[f"{arm}_accuracy_spread"] = (round(v, 4) for v in result_files.mean_std(acc))
    used = [tests[("adatape", s)][3][labels == c].mean() for s in args.seeds]
    row["tape_tokens_mean"], row["tape_tokens_spread"] = (round(v, 3) for v in result_files.mean_std(used))
    row["plain_loss_mean"] = round(float(difficulty[labels == c].mean()), 4)
    class_rows.append(row)
  for seed in args.seeds:
    _, _, own_loss, used = tests[("adatape", seed)]
    for b in range(BINS):
      difficulty_rows.append({"seed": seed, "bin": b,
                              "plain_loss_low": round(float(edges[b]), 5),
                              "plain_loss_high": round(float(edges[b + 1]), 5),
                              "tape_tokens_mean": round(float(used[bins == b].mean()), 4)})
    rho_plain = scipy.stats.spearmanr(used, difficulty).statistic
    rho_own = scipy.stats.spearmanr(used, own_loss).statistic
    print(f"seed {seed}: Spearman(tape tokens, plain-model loss) = {rho_plain:+.3f}, "
          f"(tape tokens, own loss) = {rho_own:+.3f}")
    for r in runs:
      if r["arm"] == "adatape" and r["seed"] == seed:
        r["spearman_tape_vs_plain_loss"] = round(float(rho_plain), 4)
        r["spearman_tape_vs_own_loss"] = round(float(rho_own), 4)
  for r in runs:
    r.setdefault("spearman_tape_vs_plain_loss", "")
    r.setdefault("spearman_tape_vs_own_loss", "")
  result_files.write_csv(os.path.join(args.results, f"{args.name}.csv"), runs)
  result_files.write_csv(os.path.join(args.results, f"{args.name}_classes.csv"), class_rows)
  result_files.write_csv(os.path.join(args.results, f"{args.name}_difficulty.csv"), difficulty_rows)
  plot(class_rows, difficulty_rows, os.path.join(args.figures, f"{args.name}.png"))
  for arm in ARMS:
    acc = [r["test_accuracy"] for r in runs if r["arm"] == arm]
    cpu = [r["train_cpu_s"] for r in runs if r["arm"] == arm]
    mean, std = result_files.mean_std(acc)
    print(f"{arm}: test accuracy {mean:.4f} ± {std:.4f} over {len(acc)} seeds; "
          f"train CPU {np.mean(cpu):.0f} s per run")
  print(f"wrote {args.results}/{args.name}*.csv and {args.figures}/{args.name}.png")


if __name__ == "__main__":
  main()
