"""Packing efficiency: the share of real (non-pad) tokens in NaViT's packed rows, against
resize-and-pad to the largest size, on a stream of mixed-size images.

    python -m palix.eval.perf.packing [--steps 40] [--rows 16]

The stream is the training stream of ``fashion_mnist_canvas_class`` (Fashion-MNIST items on
canvases of 16-96 px per side, random aspect ratio) through ``palix.tasks.class_batches`` with
patch 8 and native resolution capped at 64 px (what ``gin/models/classifier/navit_tiny.gin``
trains on): every image becomes a grid of whole patches, 1x1 to 8x8. For each packing
setting (row length L, image slots K, images scheduled per row) it packs ``--steps`` steps of
``--rows`` rows and prints the share of the rows' tokens that are real, and how many scheduled
images were carried over to the next step, trimmed to fit it, or dropped
(``palix.tasks.packing.PackingStats``). Resize-and-pad gives every image the largest patch grid,
8x8 = 64 tokens, of which its own grid is real. The last line is the headline setting
(``HEADLINE``): ``non-pad tokens: NN.N%`` next to resize-and-pad.
"""

import argparse
import itertools
import logging
import time

import numpy as np

from palix.tasks import class_batches
from palix.tasks import packing

TASK = "fashion_mnist_canvas_class"
PATCH, MAX_SIDE = 8, 64
# (seq_len L, max_images K, images_per_row): rows of 128 and 256 tokens, scheduling from
# well below to just above the rows' capacity (about 33.5 tokens per image).
SETTINGS = [(128, 12, 3.4), (128, 12, 3.6), (128, 12, 3.9), (256, 16, 7.3), (256, 16, 7.7)]
HEADLINE = (256, 16, 7.7)


def measure(seq_len: int, max_images: int, images_per_row: float, *, steps: int, rows: int):
  """Packs ``steps`` steps; returns the stats and the patch-grid sizes of the packed images."""
  options = packing.PackingOptions(patch_size=PATCH, seq_len=seq_len, max_images=max_images,
                                   images_per_row=images_per_row,
                                   resolution=packing.Resolution(max_side=MAX_SIDE))
  stats = packing.PackingStats()
  stream = class_batches.get_class_batches(TASK, split="train", batch_size=rows, seed=0,
                                           packing=options, packing_stats=stats)
  grids = []
  for batch in itertools.islice(stream, steps):
    grids.append(batch["grid_sizes"][batch["image_mask"] == 1])
  return stats, np.concatenate(grids)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--rows", type=int, default=16)
  args = parser.parse_args(argv)
  logging.getLogger("palix.tasks.packing").setLevel(logging.ERROR)  # drops are counted below
  print(f"{TASK}: patch {PATCH}, longest side <= {MAX_SIDE} px, {args.steps} steps of "
        f"{args.rows} rows")
  print("  L    K  images/row  non-pad  carried  trimmed  dropped  (of scheduled images)")
  headline = None
  for setting in SETTINGS:
    start = time.time()
    stats, grids = measure(*setting, steps=args.steps, rows=args.rows)
    scheduled = stats.images + stats.dropped
    print(f"{setting[0]:4d} {setting[1]:3d} {setting[2]:10.1f} "
          f"{100 * stats.non_pad_fraction:7.1f}% {100 * stats.carried_over / scheduled:7.1f}% "
          f"{100 * stats.trimmed / scheduled:7.1f}% {100 * stats.dropped / scheduled:7.1f}%  "
          f"({stats.images} images, {time.time() - start:.0f} s)", flush=True)
    if setting == HEADLINE:
      headline = (stats, grids)
  stats, grids = headline
  largest = (MAX_SIDE // PATCH) ** 2
  padded = float(np.prod(grids, axis=1).mean() / largest)
  print(f"mean image: {np.prod(grids, axis=1).mean():.1f} tokens; resize-and-pad to "
        f"{MAX_SIDE}x{MAX_SIDE} px ({largest} tokens each) would be {100 * padded:.1f}% real")
  print(f"non-pad tokens: {100 * stats.non_pad_fraction:.1f}% (L={HEADLINE[0]}, "
        f"K={HEADLINE[1]}, {HEADLINE[2]} images/row; resize-and-pad: {100 * padded:.1f}%)")


if __name__ == "__main__":
  main()
