"""The sparse scaling-law sweep and the 2:4-vs-unstructured comparison, on CPU, in one process.

``python -m palix.eval.experiments.sparsity_sweep sweep`` trains the shared ViT classifier
(``palix.models.classifier``) on Fashion-MNIST for every (width, sparsity, data budget) of the
grid below and writes ``docs/results/sparsity_sweep.csv`` (one row per run, in the columns
``palix sparsity fit`` reads). ``... nm`` trains dense, unstructured 50%, iterative 2:4 and one-shot
2:4 on one model over three seeds and writes ``docs/results/sparsity_nm.csv``. ``... report``
prints the 2:4 comparison (with paired per-seed differences) and draws
``docs/img/sparsity_sweep.png`` from the sweep and ``docs/results/sparsity_fit.json`` (written by
``palix sparsity fit --out``). ``--quick`` shrinks the sweep or the comparison to a smoke run.

Setting (chosen to fit a shared 2-core CPU; docs/sparsity.md states the measured budget):

* model: ``ClassifierModel``, a pre-LN ViT with depth 2, MLP 2x width, 4 heads (2 at width 16),
  patch 7 on 28 px (16 tokens), global average pooling, linear head;
* pruned: the transformer blocks' kernels (``vit/Transformer/block.*/kernel``), as the paper
  counts N over the blocks; embeddings, positions and the head stay dense;
* N: non-zero block parameters, in thousands, counted on the final parameters;
* D: training examples seen, in thousands (batch 32 x steps);
* loss: softmax cross-entropy on the 10,000 Fashion-MNIST test images (the paper's validation
  loss);
* training: AdamW (lr 3e-3, weight decay 1e-4, cosine with 5% warm-up), gradient clipping 1.0;
  pruning with the paper's cubic GMP schedule from 25% to 75% of training, masks updated every
  0.5% of training (at least every step), as the paper's 100 of 20,000 steps.

Runs of the same width share nothing but the data; each run compiles its own step (the schedule
lengths are static), which costs a few seconds per run.
"""

import argparse
import csv
import dataclasses
import os
import re
import time
from typing import Dict, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from palix import sparsity
from palix.models import classifier, vit
from palix.sparsity import counting
from palix.tasks.sources import fashion_mnist
from palix.training import optimizers, schedules, train_step
from palix.training.train_state import TrainState

BATCH_SIZE = 32
EVAL_BATCH = 1000
BLOCK_KERNELS = r"vit/Transformer/block\d+/.*/kernel"
RESULTS = os.path.join("docs", "results")


@dataclasses.dataclass(frozen=True)
class Run:
  width: int
  sparsity: float
  steps: int
  seed: int = 0
  structure: str = "unstructured"  # unstructured | iterative_nm | nm


def _model(width: int):
  heads = 4 if width >= 32 else 2
  config = classifier.ClassifierConfig(
      vit=vit.ViTConfig(width=width, depth=2, mlp_dim=2 * width, num_heads=heads, patch_size=7,
                        image_size=28, pool=vit.GlobalAveragePool), num_classes=10)
  return classifier.ClassifierModel(config, image_size=28)


def _pruning(run: Run) -> Optional[sparsity.Pruning]:
  if run.structure == "unstructured" and run.sparsity == 0:
    return None
  schedule = sparsity.GradualSchedule(total_steps=run.steps,
                                      update_every=max(1, run.steps // 200))
  if run.structure == "unstructured":
    structure = sparsity.Unstructured()
  elif run.structure == "iterative_nm":
    structure = sparsity.IterativeNM(2, 4, axis=0)
  else:
    structure = sparsity.NM(2, 4, axis=0)
  return sparsity.Pruning(sparsity=run.sparsity if structure == sparsity.Unstructured() else None,
                          structure=structure, schedule=schedule, include=[BLOCK_KERNELS])


def _images(raw: np.ndarray) -> np.ndarray:
  x = raw.astype(np.float32) / 127.5 - 1.0
  return np.repeat(x[..., None], 3, axis=-1)


class Data:
  """Fashion-MNIST in memory (uint8); batches converted on the fly."""

  def __init__(self, eval_examples: int):
    self.train_images, self.train_labels = fashion_mnist.load("train")
    test_images, test_labels = fashion_mnist.load("test")
    self.test = [({"images": _images(test_images[i:i + EVAL_BATCH]),
                   "labels": test_labels[i:i + EVAL_BATCH].astype(np.int32)})
                 for i in range(0, eval_examples, EVAL_BATCH)]

  def batches(self, seed: int, steps: int):
    rng = np.random.default_rng(seed)
    order = np.array([], np.int64)
    for _ in range(steps):
      if len(order) < BATCH_SIZE:
        order = np.concatenate([order, rng.permutation(len(self.train_labels))])
      idx, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
      yield {"images": _images(self.train_images[idx]),
             "labels": self.train_labels[idx].astype(np.int32)}


def train_one(run: Run, data: Data, eval_fns: Dict[int, object]) -> Dict:
  model = _model(run.width)
  lr = schedules.cosine(base_learning_rate=3e-3, total_steps=run.steps,
                        warmup_steps=max(1, run.steps // 20))
  opt = optimizers.Optimizer(
      learning_rate_fn=lr, clip_grad_norm=1.0, sparsity=_pruning(run),
      base=lambda learning_rate, mask: optimizers.adamw(learning_rate, mask, weight_decay=1e-4))
  tx = opt.make()
  params = nn.meta.unbox(model.get_initial_variables(jax.random.key(run.seed))["params"])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(run.seed + 1000)))
  step = jax.jit(train_step.make_train_step(model, tx, lr, opt.frozen_mask(params)),
                 donate_argnums=(0,))
  start = time.time()
  for batch in data.batches(run.seed, run.steps):
    state, _ = step(state, batch)
  jax.block_until_ready(state.params)
  train_s = time.time() - start
  if run.width not in eval_fns:  # rng=None: no dropout
    eval_fns[run.width] = jax.jit(lambda p, b, m=model: m.loss_fn(p, b, None)[1])
  sums = {"loss": 0.0, "accuracy": 0.0}
  count = 0
  for batch in data.test:
    metrics = eval_fns[run.width](state.params, batch)
    n = len(batch["labels"])
    sums = {k: sums[k] + float(metrics[k]) * n for k in sums}
    count += n
  counts = counting.nonzero_counts(state.params)
  block_total = counting.totals({p: c for p, c in counts.items()
                                 if re.fullmatch(BLOCK_KERNELS, p)})
  return {
      "width": run.width, "structure": run.structure, "seed": run.seed, "steps": run.steps,
      "sparsity": run.sparsity,
      "measured_sparsity": round(block_total.sparsity, 5),
      "nonzero_params": block_total.nonzero / 1e3,  # thousands of non-zero block parameters
      "data": run.steps * BATCH_SIZE / 1e3,  # thousands of training examples
      "loss": sums["loss"] / count, "accuracy": sums["accuracy"] / count,
      "dense_block_params": block_total.size, "train_seconds": round(train_s, 2),
  }


def _write(rows: List[Dict], path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _run_all(runs: List[Run], out: str, eval_examples: int):
  data = Data(eval_examples)
  eval_fns, rows = {}, []
  started = time.time()
  for i, run in enumerate(runs):
    row = train_one(run, data, eval_fns)
    rows.append(row)
    _write(rows, out)  # partial results survive an interrupted sweep
    print(f"[{i + 1}/{len(runs)} {time.time() - started:.0f}s] {run}: loss {row['loss']:.4f} "
          f"acc {row['accuracy']:.4f} N {row['nonzero_params']:.2f}k "
          f"({row['train_seconds']:.0f}s)", flush=True)
  print(f"wrote {out}: {len(rows)} runs in {time.time() - started:.0f} s")


def _read(path: str) -> List[Dict]:
  with open(path) as f:
    return [{k: (v if k == "structure" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)]


def report(sweep_csv: str, nm_csv: str, fit_json: str, figure: str):
  """Prints the 2:4 comparison (mean ± std over seeds) and draws the sweep with the fitted law."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from palix.sparsity import law as law_lib  # pylint: disable=g-import-not-at-top

  if os.path.exists(nm_csv):
    rows = _read(nm_csv)
    print("| structure | sparsity | seeds | test loss (mean ± std) | accuracy (mean ± std) |")
    print("|---|---|---|---|---|")
    for key in dict.fromkeys((r["structure"], r["sparsity"]) for r in rows):
      group = [r for r in rows if (r["structure"], r["sparsity"]) == key]
      loss = np.array([r["loss"] for r in group])
      acc = np.array([r["accuracy"] for r in group])
      print(f"| {key[0]} | {key[1]:g} | {len(group)} | {loss.mean():.4f} ± {loss.std(ddof=1):.4f} "
            f"| {acc.mean():.4f} ± {acc.std(ddof=1):.4f} |")
    # Seeds are paired (a seed fixes the initialisation and the batches for every structure).
    by_key = {(r["structure"], r["sparsity"], r["seed"]): r["loss"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    for a, b in ((("iterative_nm", 0.5), ("unstructured", 0.5)), (("nm", 0.5), ("unstructured", 0.5)),
                 (("unstructured", 0.5), ("unstructured", 0.0))):
      diff = np.array([by_key[a + (s,)] - by_key[b + (s,)] for s in seeds])
      print(f"paired loss difference {a[0]} {a[1]:g} - {b[0]} {b[1]:g}: {diff.mean():+.4f} ± "
            f"{diff.std(ddof=1):.4f} (per seed: {', '.join(f'{x:+.4f}' for x in diff)})")
  rows = _read(sweep_csv)
  coeffs = law_lib.load_setting(fit_json).coefficients
  widths = sorted({r["width"] for r in rows})
  fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.8), dpi=110,
                           sharey=True)
  for ax, width in zip(np.atleast_1d(axes), widths):
    for colour, s in zip(("C0", "C1", "C2", "C3"), sorted({r["sparsity"] for r in rows})):
      group = sorted((r for r in rows if r["width"] == width and r["sparsity"] == s),
                     key=lambda r: r["data"])
      d = np.array([r["data"] for r in group])
      ax.plot(d, [r["loss"] for r in group], "o", color=colour, label=f"S = {s:g}")
      grid = np.geomspace(d.min(), d.max(), 50)
      ax.plot(grid, coeffs.loss(s, group[0]["nonzero_params"], grid), "-", color=colour, lw=1)
    ax.set_xscale("log")
    budgets = sorted({r["data"] for r in rows})
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.minorticks_off()
    ax.set_title(f"width {width:g}")
    ax.set_xlabel("D (thousands of examples)")
  np.atleast_1d(axes)[0].set_ylabel("test loss")
  np.atleast_1d(axes)[0].legend()
  fig.suptitle("CPU sweep (points) and the fitted L(S, N, D) (lines)")
  fig.tight_layout()
  fig.savefig(figure)
  print(f"wrote {figure}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("experiment", choices=["sweep", "nm", "report"])
  parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
  parser.add_argument("--out", help="CSV path (default docs/results/sparsity_<experiment>.csv)")
  parser.add_argument("--fit", default="docs/results/sparsity_fit.json",
                      help="report: the fit written by palix sparsity fit --out")
  args = parser.parse_args(argv)
  if args.experiment == "report":
    report(os.path.join(RESULTS, "sparsity_sweep.csv"), os.path.join(RESULTS, "sparsity_nm.csv"),
           args.fit, os.path.join("docs", "img", "sparsity_sweep.png"))
    return
  if args.experiment == "sweep":
    widths, budgets, seeds = (16, 32, 64), (100, 200, 400, 800), (0,)
    sparsities = (0.0, 0.5, 0.75, 0.875)
    if args.quick:
      widths, budgets, sparsities = (16,), (8,), (0.0, 0.5)
    # Budget-major order: an interrupted sweep still covers every width and sparsity.
    runs = [Run(w, s, b, seed) for b in budgets for w in widths for s in sparsities
            for seed in seeds]
  else:
    steps = 8 if args.quick else 400
    runs = [Run(32, s, steps, seed, structure)
            for seed in ((0,) if args.quick else (0, 1, 2))
            for structure, s in (("unstructured", 0.0), ("unstructured", 0.5),
                                 ("iterative_nm", 0.5), ("nm", 0.5))]
  out = args.out or os.path.join(RESULTS, f"sparsity_{args.experiment}.csv")
  _run_all(runs, out, 1000 if args.quick else 10_000)


if __name__ == "__main__":
  main()
