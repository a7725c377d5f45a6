"""Soft MoE cost table: parameters and forward FLOPs per image as the experts grow at fixed slots.

    python -m palix.eval.experiments.soft_moe_cost [--scale B/16] [--total_slots 128]
        [--experts 1,2,4,...] [--csv docs/results/soft_moe_cost.csv]
        [--png docs/img/soft_moe_cost.png]

A ViT (QK-norm, as the paper's backbone) whose last half of MLPs are Soft MoE layers with
``total_slots`` slots per image split evenly over ``E`` experts (``total_slots / E`` slots each),
against the dense model of the same scale. Counts come from ``palix.model_stats`` (abstract
tracing: nothing is allocated; FLOPs are the matmuls, 2 per multiply-add, as ``palix params``
reports them). The routing (logits, dispatch, combine) and the expert matmuls depend only on the
slot count, so FLOPs per image are flat in ``E`` while every expert adds one MLP of parameters.
"""

import argparse
import csv
import os
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from palix import model_stats
from palix.layers.soft_moe import SoftMoeConfig
from palix.models.vit import ViT, ViTConfig

EXPERTS = (1, 2, 4, 8, 16, 32, 64, 128)
TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, image_size=32)


def scale_config(scale: str) -> dict:
  """``'B/16'`` -> ViTConfig keyword arguments at 224 px with QK-norm."""
  variant, _, patch = scale.partition("/")
  return dict(variant=variant, patch_size=int(patch or 16), image_size=224, qk_norm=True)


def _count(config: ViTConfig) -> Dict[str, int]:
  config = config.resolved()
  size = config.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  module = ViT(config)
  shapes = model_stats.param_shapes(module, {"images": images})
  flops = model_stats.forward_flops(lambda p, x: module.apply({"params": p}, x), shapes, images)
  return {"params": model_stats.count_params(shapes), "forward_flops": flops}


def cost_table(base: dict, experts: Sequence[int] = EXPERTS, total_slots: int = 128,
               last_n: Optional[int] = None) -> List[dict]:
  """One row per expert count (``experts``, ``slots_per_expert``, ``params``,
  ``forward_flops``); ``last_n`` defaults to half the depth."""
  dense = ViTConfig(**base, scan=True)  # scanned: one traced layer per stack, same counts
  last_n = last_n or dense.resolved().depth // 2
  rows = []
  for count in experts:
    if total_slots % count:
      raise ValueError(f"--experts {count} does not divide --total_slots {total_slots}")
    moe = SoftMoeConfig(num_experts=count, slots_per_expert=total_slots // count,
                        last_n_layers=last_n)
    rows.append({"experts": count, "slots_per_expert": total_slots // count,
                 **_count(ViTConfig(**base, scan=True, moe=moe))})
  return rows


def dense_row(base: dict) -> dict:
  return {"experts": 0, "slots_per_expert": 0, **_count(ViTConfig(**base, scan=True))}


def format_table(rows: List[dict], dense: dict, title: str) -> str:
  first = rows[0]["forward_flops"]
  lines = [title, f"{'experts':>8} {'slots/expert':>12} {'params':>16} {'GFLOPs/img':>11} "
                  f"{'vs 1 expert':>11}"]
  for r in rows:
    lines.append(f"{r['experts']:>8} {r['slots_per_expert']:>12} {r['params']:>16,} "
                 f"{r['forward_flops'] / 1e9:>11.3f} {r['forward_flops'] / first:>11.4f}")
  lines.append(f"{'dense':>8} {'-':>12} {dense['params']:>16,} "
               f"{dense['forward_flops'] / 1e9:>11.3f} {dense['forward_flops'] / first:>11.4f}")
  spread = max(abs(r["forward_flops"] / first - 1) for r in rows)
  growth = rows[-1]["params"] / rows[0]["params"]
  lines.append(f"params x{growth:.1f} from {rows[0]['experts']} to {rows[-1]['experts']} experts; "
               f"largest FLOPs change {100 * spread:.2f}% ({'within' if spread <= 0.05 else 'NOT within'}"
               " 5%)")
  return "\n".join(lines)


def write_csv(rows: List[dict], dense: dict, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["experts", "slots_per_expert", "params",
                                           "forward_flops"])
    writer.writeheader()
    writer.writerows(rows + [dense])


def plot(rows: List[dict], dense: dict, title: str, path: str) -> None:
  import matplotlib  # the eval extra; imported only when a figure is asked for
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  experts = [r["experts"] for r in rows]
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  ax.plot(experts, [r["params"] / 1e6 for r in rows], "o-", color="tab:blue",
          label="Soft MoE parameters")
  ax.axhline(dense["params"] / 1e6, color="tab:blue", ls=":", label="dense parameters")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("experts (total slots per image fixed)")
  ax.set_ylabel("parameters (M)", color="tab:blue")
  right = ax.twinx()
  right.plot(experts, [r["forward_flops"] / 1e9 for r in rows], "s-", color="tab:red",
             label="Soft MoE forward GFLOPs/img")
  right.axhline(dense["forward_flops"] / 1e9, color="tab:red", ls=":",
                label="dense forward GFLOPs/img")
  top = max(r["forward_flops"] for r in rows + [dense]) / 1e9
  right.set_ylim(0, 1.25 * top)
  right.set_ylabel("forward GFLOPs per image", color="tab:red")
  handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
  ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", default="B/16", help="ViT scale/patch, e.g. S/16, B/16, L/16")
  parser.add_argument("--total_slots", type=int, default=128)
  parser.add_argument("--experts", default=",".join(map(str, EXPERTS)),
                      help="comma-separated expert counts (each must divide --total_slots)")
  parser.add_argument("--csv", help="write the rows (and the dense row, experts=0) here")
  parser.add_argument("--png", help="plot parameters and FLOPs against experts here")
  args = parser.parse_args(argv)
  try:
    experts = [int(e) for e in args.experts.split(",")]
    base = scale_config(args.scale)
    with jax.default_device(jax.devices("cpu")[0]):
      rows = cost_table(base, experts, args.total_slots)
      dense = dense_row(base)
  except ValueError as error:
    parser.error(str(error))
  last_n = ViTConfig(**base).resolved().depth // 2
  title = (f"Soft MoE ViT-{args.scale} at 224 px, MoE in the last {last_n} blocks, "
           f"{args.total_slots} slots per image")
  print(format_table(rows, dense, title))
  if args.csv:
    write_csv(rows, dense, args.csv)
  if args.png:
    plot(rows, dense, title, args.png)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
