"""Does the demo PaLI-X learn the direction of motion, not only its axis? (docs/performance.md)

    python -m palix.eval.experiments.video_time [--arms frames_apart,clip_sincos]
        [--seeds 0,1,2] [--steps 1200] [--batch 32] [--work_dir /tmp/video_time]
        [--csv docs/results/video_time.csv] [--json docs/results/video_time.json]
        [--png docs/img/video_time.png]

Every run is the demo's model and optimizer (``experiments/demo_{model,train}.gin``) trained by
``palix train`` on ``moving_shapes_vqa`` alone (which way does the shape move? 6 frames of 32 px,
1200 steps of 32 clips by default: 600 steps of 16 left both arms answering one direction for
every clip; one clip per row: the packing of ``make demo`` does not change what the model
computes, ``tests/models/test_palix_packed.py``), then scored by ``palix eval`` on the first 200
test clips. The arms differ only in how the frames reach the model:

* ``frames_apart``: every frame through the ViT alone, a learned per-frame embedding added after
  the projection (``PaliXConfig.time_posemb = None``: PaLI-X, and the demo before this study);
* ``clip_sincos``: the 6 frames as one ViT sequence (attention across frames) with the fixed
  sin-cos ``phi_t`` of the frame index next to the ViT's sin-cos ``phi_y + phi_x``;
* ``clip_learned``: the same with a learned ``phi_t`` table (std 0.02 at init).

Reported per run: exact-match accuracy, the share of clips whose answer has the right axis
(left/right vs up/down), and the direction accuracy among those (0.5 = the sign at chance).
Runs whose results exist in ``--work_dir`` are reused. CPU time is ``palix train``'s user +
system time.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from typing import Dict, List

from palix.eval.experiments import result_files

MODEL_FILES = ("experiments/demo_model.gin",)
TASK = "moving_shapes_vqa"
ARMS = {
    "frames_apart": ("PaliXConfig.time_posemb=None",),
    "clip_sincos": ("PaliXConfig.time_posemb=%palix.SinCosTimePosEmb",),
    "clip_learned": ("PaliXConfig.time_posemb=%palix.LearnedTimePosEmb",),
}
AXIS = {"left": "x", "right": "x", "up": "y", "down": "y"}
COMMON = (f"MIXTURE_OR_TASK_NAME='{TASK}'", "TASK_FEATURE_LENGTHS={'inputs':16,'targets':8}",
          "FEATURE_LENGTHS_BY_TASK=None", "IMAGE_SIZE_BY_TASK=None")


def _run(command: List[str], log_path: str) -> float:
  """Runs a palix command; returns its CPU seconds (user + system)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(log_path, "w") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if code:
    raise SystemExit(f"{' '.join(command[2:5])} failed (exit {code}); see {log_path}")
  return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _flags(bindings) -> List[str]:
  return [f"--gin.{b}" for b in bindings]


def run_one(arm: str, seed: int, steps: int, batch: int, work_dir: str) -> Dict:
  model_dir = os.path.join(work_dir, f"{arm}_seed{seed}")
  result_path = os.path.join(model_dir, "result.json")
  if os.path.isfile(result_path):
    with open(result_path) as f:
      return json.load(f)
  os.makedirs(model_dir, exist_ok=True)
  palix = [sys.executable, "-m", "palix.cli.main"]
  train = palix + ["train", "--gin_file=runs/pretrain.gin",
                   *[f"--gin_file={f}" for f in MODEL_FILES],
                   "--gin_file=experiments/demo_train.gin"]
  train += _flags(COMMON + ARMS[arm] + (
      "data.task_batches.packing=None", f"TRAIN_STEPS={steps}", f"BATCH_SIZE={batch}",
      f"SEED={seed}", f"MODEL_DIR='{model_dir}'", "trainer.train.progress_bar=False",
      "trainer.train.checkpoint_period=100000"))
  cpu = _run(train, os.path.join(model_dir, "train.log"))
  evaluate = palix + ["eval", "--gin_file=runs/eval.gin", *[f"--gin_file={f}" for f in MODEL_FILES],
                      "--gin_file=experiments/demo_eval.gin"]
  evaluate += _flags(COMMON + ARMS[arm] + (f"CHECKPOINT_PATH='{model_dir}'",
                                           f"EVAL_OUTPUT_DIR='{model_dir}/eval'",
                                           "MAX_EVAL_EXAMPLES=200"))
  _run(evaluate, os.path.join(model_dir, "eval.log"))
  result = dict(arm=arm, seed=seed, steps=steps, batch=batch, train_cpu_s=round(cpu, 1),
                **score(os.path.join(model_dir, "eval", "predictions", f"{TASK}.jsonl")))
  with open(result_path, "w") as f:
    json.dump(result, f)
  return result


def score(predictions_path: str) -> Dict[str, float]:
  """Accuracy, right-axis share and direction accuracy given the right axis."""
  rows = [json.loads(line) for line in open(predictions_path)]
  exact = sum(r["prediction"].strip() == r["target"] for r in rows)
  axis_right = [r for r in rows if AXIS.get(r["prediction"].strip()) == AXIS[r["target"]]]
  sign_right = sum(r["prediction"].strip() == r["target"] for r in axis_right)
  return {"clips": len(rows), "accuracy": exact / len(rows), "axis_accuracy": len(axis_right) / len(rows),
          "direction_given_axis": sign_right / max(len(axis_right), 1)}


def summarise(results: List[Dict]) -> Dict[str, Dict[str, float]]:
  out = {}
  for arm in dict.fromkeys(r["arm"] for r in results):
    mine = [r for r in results if r["arm"] == arm]
    out[arm] = {"seeds": len(mine)}
    for key in ("accuracy", "axis_accuracy", "direction_given_axis", "train_cpu_s"):
      values = [r[key] for r in mine]
      out[arm][key] = statistics.mean(values)
      out[arm][key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
  return out


def plot(summary: Dict, results: List[Dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = (("accuracy", "video QA accuracy"), ("axis_accuracy", "axis right"),
          ("direction_given_axis", "direction right, given the axis"))
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
  for ax, (key, title) in zip(axes, keys):
    arms = list(summary)
    for i, arm in enumerate(arms):
      values = [r[key] for r in results if r["arm"] == arm]
      ax.bar(i, summary[arm][key], color="#bcd", edgecolor="#345")
      ax.scatter([i] * len(values), values, color="#345", zorder=3, s=14)
    ax.axhline(0.25 if key == "accuracy" else 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, rotation=15)
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
  axes[0].set_ylabel("share of 200 test clips (dots: seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arms", default="frames_apart,clip_sincos,clip_learned")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=1200)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--work_dir", default="/tmp/video_time")
  parser.add_argument("--csv")
  parser.add_argument("--json")
  parser.add_argument("--png")
  args = parser.parse_args(argv)
  results = [run_one(arm, int(seed), args.steps, args.batch, args.work_dir)
             for seed in args.seeds.split(",") for arm in args.arms.split(",")]
  summary = summarise(results)
  for arm, s in summary.items():
    print(f"{arm:13s} accuracy {s['accuracy']:.3f} ± {s['accuracy_sd']:.3f}  axis "
          f"{s['axis_accuracy']:.3f}  direction | axis {s['direction_given_axis']:.3f} ± "
          f"{s['direction_given_axis_sd']:.3f}  ({s['seeds']} seeds, {s['train_cpu_s']:.0f} "
          "CPU-s of training each)")
  if args.csv:
    result_files.write_csv(args.csv, results)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"summary": summary, "runs": results}, f, indent=1)
  if args.png:
    plot(summary, results, args.png)


if __name__ == "__main__":
  main()
