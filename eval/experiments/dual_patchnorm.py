"""Dual PatchNorm, measured: the tiny classifier with and without LayerNorms around the patch
embedding (Kumar et al. 2023; papers.md §2.8), same budget, several seeds.

    python -m palix.eval.experiments.dual_patchnorm [--seeds 0 1 2] [--steps 600] [--quick]

Both arms are ``gin/models/classifier/classifier_tiny.gin``'s model (ViT width 64, 3 layers,
4 heads, patch 4 on 28 px, global average pooling) trained on ``fashion_mnist_class`` with AdamW
(lr 3e-3, cosine, 50 warm-up steps, clipping 1.0) for ``--steps`` steps of batch 64; they differ
only in ``ViTConfig.patch_embed``: ``ConvPatchEmbed`` (a stride-4 convolution) or
``DualPatchNormEmbed`` (patchify, LayerNorm over the 48 pixel values, Dense, LayerNorm over the
width). A seed fixes the initialisation, the data order and the flips, so the two arms of a seed
see the same batches. Test accuracy and loss are over all 10,000 test images. Writes one row per
run to ``docs/results/dual_patchnorm.csv`` and prints mean ± standard deviation per arm and the
per-seed differences.
"""

import argparse
import functools
import os

import numpy as np

from palix.eval.experiments import classifier_runs
from palix.eval.experiments import result_files
from palix.layers.patch import ConvPatchEmbed, DualPatchNormEmbed
from palix.layers.pooling import GlobalAveragePool
from palix.models.classifier import ClassifierConfig, ClassifierModel
from palix.models.vit import ViTConfig

TASK = "fashion_mnist_class"
IMAGE_SIZE = 28
ARMS = {"conv": ConvPatchEmbed, "dual_patchnorm": DualPatchNormEmbed}
RESULTS = os.path.join("docs", "results", "dual_patchnorm.csv")


def make_model(patch_embed) -> ClassifierModel:
  vit = ViTConfig(width=64, depth=3, mlp_dim=128, num_heads=4, patch_size=4,
                  image_size=IMAGE_SIZE, pool=GlobalAveragePool, patch_embed=patch_embed)
  return ClassifierModel(ClassifierConfig(vit, num_classes=10), image_size=IMAGE_SIZE)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--output", default=RESULTS)
  parser.add_argument("--quick", action="store_true", help="20 steps, one seed (a smoke run)")
  args = parser.parse_args(argv)
  if args.quick:
    args.seeds, args.steps = args.seeds[:1], 20
  from palix.tasks import class_batches  # pylint: disable=g-import-not-at-top
  source = functools.partial(class_batches.get_class_batches, image_size=IMAGE_SIZE)
  setting = classifier_runs.TrainSetting(steps=args.steps, batch_size=args.batch_size)
  rows = []
  for seed in args.seeds:
    for arm, patch_embed in ARMS.items():
      model = make_model(patch_embed)
      run = classifier_runs.train_classifier(model, task=TASK, setting=setting, seed=seed,
                                             batch_source=source)
      metrics = classifier_runs.test_metrics(model, run.params, task=TASK, batch_source=source)
      rows.append({"arm": arm, "seed": seed, "steps": args.steps, "batch_size": args.batch_size,
                   "test_accuracy": round(metrics["accuracy"], 5),
                   "test_loss": round(metrics["loss"], 5),
                   "train_cpu_s": round(run.cpu_seconds, 1)})
      print(rows[-1], flush=True)
  result_files.write_csv(args.output, rows)
  for arm in ARMS:
    accuracy = [r["test_accuracy"] for r in rows if r["arm"] == arm]
    loss = [r["test_loss"] for r in rows if r["arm"] == arm]
    print(f"{arm}: test accuracy {result_files.mean_and_std(accuracy)}, "
          f"test loss {result_files.mean_and_std(loss)} ({len(accuracy)} seeds)")
  by_seed = {(r["arm"], r["seed"]): r["test_accuracy"] for r in rows}
  diffs = [by_seed[("dual_patchnorm", s)] - by_seed[("conv", s)] for s in args.seeds]
  print("per-seed accuracy difference (dual_patchnorm - conv): "
        + ", ".join(f"{d:+.4f}" for d in diffs) + f"; mean {np.mean(diffs):+.4f}")
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
