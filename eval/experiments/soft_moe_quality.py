"""Dense ViT vs Soft MoE ViT of the same forward FLOPs on Fashion-MNIST (docs/soft_moe.md).

    python -m palix.eval.experiments.soft_moe_quality [--seeds 0,1,2] [--steps 600]
        [--work_dir /tmp/soft_moe_quality] [--json docs/results/soft_moe_quality.json]
        [--csv docs/results/soft_moe_quality.csv] [--png docs/img/soft_moe_quality.png]

Both arms are the shared tiny classifier (``models/classifier/classifier_tiny.gin``: width 64, 3
blocks, MLP 128, patch 4 on 28 px = 49 tokens, GAP, linear head) trained by ``palix train`` with
``experiments/classifier_fashion_mnist.gin`` (AdamW, cosine schedule from 3e-3, batch 64), the
same steps and, for a given seed, the same initial data order. The Soft MoE arm replaces the
MLPs of the last 2 blocks by Soft MoE layers of 32 experts x 1 slot: 32 slots cost the MLP
FLOPs of ~31 tokens plus the routing, which lands the whole model within 1% of the dense
model's forward FLOPs (both are printed, from ``palix.model_stats``).

Each run is one ``palix train`` process (metrics every 25 steps in ``metrics.jsonl``: with under
one epoch of training every batch is unseen, so the training-batch accuracy logged before each
update is a held-out learning curve); the final checkpoint is then scored on all 10,000 test
images here. Runs whose results already exist in ``--work_dir`` are reused (delete the folder to
retrain). CPU time is the ``palix train`` process's user + system time.
"""

import argparse
import csv
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
from typing import Dict, List

import gin
import jax
import numpy as np
import scipy.stats

from palix import config as palix_config
from palix import model_stats
from palix import partitioning
from palix.training import checkpoints

TASK = "fashion_mnist_class"
IMAGE_SIZE = 28
TRAIN_FILES = ("models/classifier/classifier_tiny.gin", "runs/pretrain.gin",
               "experiments/classifier_fashion_mnist.gin")
LOG_PERIOD = 25
ARMS = {
    "dense": (),
    "soft_moe": ("ViTConfig.moe = @SoftMoeConfig()", "SoftMoeConfig.num_experts = 32",
                 "SoftMoeConfig.slots_per_expert = 1", "SoftMoeConfig.last_n_layers = 2"),
}


def build_model(arm: str):
  """The arm's ``ClassifierModel``, exactly as ``palix train`` builds it from the gin files."""
  gin.clear_config()
  palix_config.parse_gin(TRAIN_FILES[:1], list(ARMS[arm]), finalize=False)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  gin.clear_config()
  return model


def forward_flops(model) -> Dict[str, int]:
  inputs = model.example_inputs(1)
  shapes = model_stats.param_shapes(model.module, inputs)
  flops = model_stats.forward_flops(lambda p, x: model.module.apply({"params": p}, **x), shapes,
                                    inputs)
  return {"params": model_stats.count_params(shapes), "forward_flops": flops}


def train(arm: str, seed: int, steps: int, model_dir: str) -> float:
  """Runs ``palix train``; returns its CPU seconds (user + system)."""
  command = [sys.executable, "-m", "palix.cli.main", "train"]
  command += [f"--gin_file={f}" for f in TRAIN_FILES]
  command += [f"--gin.{b.replace(' ', '')}" for b in ARMS[arm]]
  command += [f"--gin.TRAIN_STEPS={steps}", f"--gin.SEED={seed}", f"--gin.MODEL_DIR='{model_dir}'",
              f"--gin.trainer.train.log_period={LOG_PERIOD}"]
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(os.path.join(model_dir, "train.log"), "w") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if code:
    raise RuntimeError(f"palix train ({arm}, seed {seed}) exited with {code}; see "
                       f"{model_dir}/train.log")
  return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@functools.lru_cache(maxsize=None)
def _predict_fn(model):
  return jax.jit(lambda params, images: model.predict_batch(params, {"images": images}))


def test_accuracy(model, model_dir: str) -> float:
  """Accuracy of the run's final checkpoint on every test image."""
  from palix.tasks import class_batches  # TensorFlow: imported only to read the test split
  shapes = {"images": (1, IMAGE_SIZE, IMAGE_SIZE, 3)}
  params = checkpoints.load_model_params(model, os.path.join(model_dir, "checkpoints"),
                                         partitioning.Partitioner(), shapes, None)
  correct = total = 0
  for batch in class_batches.get_class_batches(TASK, split="test", batch_size=500,
                                               image_size=IMAGE_SIZE, shuffle=False,
                                               repeat=False):
    predictions = np.asarray(_predict_fn(model)(params, batch["images"]))
    real = batch["image_mask"] > 0
    correct += int((predictions[real] == batch["labels"][real]).sum())
    total += int(real.sum())
  return correct / total


def read_curve(model_dir: str) -> List[dict]:
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def run_all(seeds, steps, work_dir) -> dict:
  models = {arm: build_model(arm) for arm in ARMS}
  results = {"task": TASK, "steps": steps, "batch_size": 64, "seeds": list(seeds),
             "arms": {arm: {"bindings": list(ARMS[arm]), **forward_flops(models[arm])}
                      for arm in ARMS},
             "runs": []}
  for seed in seeds:  # arms alternate, so machine load drifts affect both alike
    for arm in ARMS:
      model_dir = os.path.join(work_dir, f"{arm}_seed{seed}")
      done = os.path.join(model_dir, "result.json")
      if os.path.exists(done):
        with open(done) as f:
          run = json.load(f)
      else:
        os.makedirs(model_dir, exist_ok=True)
        cpu_s = train(arm, seed, steps, model_dir)
        run = {"arm": arm, "seed": seed, "cpu_seconds": cpu_s,
               "test_accuracy": test_accuracy(models[arm], model_dir),
               "curve": read_curve(model_dir)}
        with open(done, "w") as f:
          json.dump(run, f)
      print(f"{arm} seed {seed}: test accuracy {run['test_accuracy']:.4f}, "
            f"{run['cpu_seconds'] / 60:.1f} CPU-min", flush=True)
      results["runs"].append(run)
  return results


def summary(results) -> Dict[str, dict]:
  out = {}
  for arm in ARMS:
    accs = [r["test_accuracy"] for r in results["runs"] if r["arm"] == arm]
    cpu = [r["cpu_seconds"] for r in results["runs"] if r["arm"] == arm]
    out[arm] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1
                else 0.0, "n": len(accs), "cpu_minutes": statistics.mean(cpu) / 60}
  pairs = {}
  for r in results["runs"]:
    pairs.setdefault(r["seed"], {})[r["arm"]] = r["test_accuracy"]
  both = [p for p in pairs.values() if len(p) == 2]
  diffs = [p["soft_moe"] - p["dense"] for p in both]
  out["paired_difference"] = {"mean": statistics.mean(diffs), "std": statistics.stdev(diffs)
                              if len(diffs) > 1 else 0.0, "n": len(diffs),
                              "positive": sum(d > 0 for d in diffs)}
  if len(both) > 1:  # is the gain larger than the seed-to-seed spread?
    test = scipy.stats.ttest_rel([p["soft_moe"] for p in both], [p["dense"] for p in both])
    out["paired_difference"].update(t=float(test.statistic), p_value=float(test.pvalue))
  return out


def write_csv(results, path):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arm", "seed", "steps", "test_accuracy", "cpu_seconds", "params",
                     "forward_flops"])
    for r in results["runs"]:
      arm = results["arms"][r["arm"]]
      writer.writerow([r["arm"], r["seed"], results["steps"], f"{r['test_accuracy']:.4f}",
                       f"{r['cpu_seconds']:.1f}", arm["params"], arm["forward_flops"]])


def plot(results, stats, path):
  import matplotlib  # the eval extra; imported only when a figure is asked for
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (curves, final, routing) = plt.subplots(1, 3, figsize=(14, 4),
                                               gridspec_kw={"width_ratios": [2.2, 1, 1.6]})
  colors = {"dense": "tab:gray", "soft_moe": "tab:blue"}
  for arm in ARMS:
    runs = [r for r in results["runs"] if r["arm"] == arm]
    steps = [p["step"] for p in runs[0]["curve"]]
    acc = np.array([[p["accuracy"] for p in r["curve"]] for r in runs])
    mean, std = acc.mean(0), acc.std(0, ddof=1) if len(runs) > 1 else np.zeros(acc.shape[1])
    info = results["arms"][arm]
    label = (f"{arm} ({info['params'] / 1e3:.0f}k params, "
             f"{info['forward_flops'] / 1e6:.2f} MFLOPs/img)")
    curves.plot(steps, mean, color=colors[arm], label=label)
    curves.fill_between(steps, mean - std, mean + std, color=colors[arm], alpha=0.25)
    accs = [r["test_accuracy"] * 100 for r in runs]
    x = list(ARMS).index(arm)
    final.bar(x, stats[arm]["mean"] * 100, yerr=stats[arm]["std"] * 100, color=colors[arm],
              alpha=0.6, capsize=6)
    final.scatter([x] * len(accs), accs, color="k", s=12, zorder=3)
  curves.set_xlabel("training step (batch 64; every batch unseen)")
  curves.set_ylabel(f"training-batch accuracy (mean over {LOG_PERIOD} steps)")
  late = [p["accuracy"] for r in results["runs"] for p in r["curve"]
          if p["step"] > results["steps"] // 4]  # past the first quarter: the part worth zooming
  curves.set_ylim(min(late or [0.0]) - 0.03, min(1.0, max(late or [1.0]) + 0.02))
  curves.legend(loc="lower right", fontsize=8)
  curves.set_title(f"Fashion-MNIST, {len(results['seeds'])} seeds: mean ± std", fontsize=10)
  final.set_xticks(range(len(ARMS)), list(ARMS))
  final.set_ylabel("test accuracy (%) after the last step")
  lo = min(r["test_accuracy"] for r in results["runs"]) * 100
  hi = max(r["test_accuracy"] for r in results["runs"]) * 100
  final.set_ylim(lo - 2, hi + 1.5)
  final.set_title("10,000 test images; dots = seeds", fontsize=10)
  _plot_routing(routing, [r for r in results["runs"] if r["arm"] == "soft_moe"])
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_routing(ax, runs):
  """The Soft MoE runs' routing statistics (logged by the classifier) against uniform routing."""
  tokens = (IMAGE_SIZE // 4) ** 2  # the tiny classifier's patch 4
  slots = 32
  styles = {"moe/dispatch_max": ("tab:blue", f"dispatch max (uniform: 1/{tokens} tokens)",
                                 1 / tokens),
            "moe/combine_max": ("tab:orange", f"combine max (uniform: 1/{slots} slots)", 1 / slots)}
  for name, (color, label, uniform) in styles.items():
    for i, run in enumerate(r for r in runs if name in r["curve"][-1]):
      points = [(p["step"], p[name]) for p in run["curve"] if name in p]
      ax.plot(*zip(*points), color=color, alpha=0.8, label=label if i == 0 else None)
    ax.axhline(uniform, color=color, ls=":")
  ax.set_xlabel("training step")
  ax.set_ylabel("mean over slots / tokens and MoE layers")
  ax.set_ylim(0, None)
  ax.legend(loc="lower right", fontsize=8)
  ax.set_title("Soft MoE routing (dotted: uniform)", fontsize=10)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--work_dir", default="/tmp/soft_moe_quality")
  parser.add_argument("--json", help="write all results (with the learning curves) here")
  parser.add_argument("--csv", help="write one row per run here")
  parser.add_argument("--png", help="plot the learning curves and test accuracies here")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  results = run_all(seeds, args.steps, args.work_dir)
  stats = summary(results)
  results["summary"] = stats
  for arm in ARMS:
    info = results["arms"][arm]
    print(f"{arm}: {info['params']:,} params, {info['forward_flops'] / 1e6:.3f} MFLOPs/img; test "
          f"accuracy {100 * stats[arm]['mean']:.2f} ± {100 * stats[arm]['std']:.2f} % "
          f"(n={stats[arm]['n']}), {stats[arm]['cpu_minutes']:.1f} CPU-min per run")
  d = stats["paired_difference"]
  print(f"soft_moe - dense (paired by seed): {100 * d['mean']:+.2f} ± {100 * d['std']:.2f} points, "
        f"positive for {d['positive']} of {d['n']} seeds; paired t = {d.get('t', float('nan')):.2f}, "
        f"two-sided p = {d.get('p_value', float('nan')):.2f}")
  if args.json:
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if args.csv:
    write_csv(results, args.csv)
  if args.png:
    plot(results, stats, args.png)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
