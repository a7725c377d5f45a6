"""Training throughput of NaViT's packed batches against resize-and-pad, on mixed-size images.

    python -m palix.eval.perf.packed_training [--rounds 4] [--steps 5]

Three streams of ``fashion_mnist_canvas_class`` feed the same tiny classifier (the model of
``palix.eval.experiments.navit``: ViT width 64, 3 layers, patch 8) through jitted palix train
steps (AdamW), in one process:

* ``packed``: NaViT rows of 128 tokens, 16 rows per step (about 56 images), native sizes up to
  64 px;
* ``pad64``: 56 images per step, each resized with its aspect ratio kept and padded to 64x64 px
  (the largest size, 64 tokens per image): the baseline;
* ``square48``: 56 images per step stretched to 48x48 px (36 tokens; distorts the aspect ratio).

After one warm-up step each (compilation), the arms take turns, ``--steps`` steps per turn for
``--rounds`` rounds, so a load change on the machine hits all of them. Each step's time includes
fetching its batch (the input pipelines run in the background and their CPU time counts too).
Prints images/s of wall time and images per CPU-second (process CPU time, all threads: steadier
than wall time on a shared machine) per arm, and the ratios to ``pad64``.
"""

import argparse
import logging
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from palix.eval.experiments import navit
from palix.training import train_step as train_step_lib
from palix.training.train_state import TrainState

ARMS = ("packed", "pad64", "square48")


def _arm(name: str):
  """``(model, batch iterator, images per batch function)``."""
  from palix.tasks import class_batches  # pylint: disable=g-import-not-at-top
  kw = dict(split="train", seed=0)
  if name == "packed":
    batches = class_batches.get_class_batches(navit.TASK, batch_size=navit.ROWS,
                                              packing=navit.packing_options(), **kw)
    return navit.make_model(navit.MAX_SIDE), batches, lambda b: int(b["image_mask"].sum())
  size, mode = (navit.MAX_SIDE, "pad") if name == "pad64" else (48, "stretch")
  batches = class_batches.get_class_batches(navit.TASK, batch_size=navit.SQUARE_BATCH,
                                            image_size=size, resize_mode=mode, **kw)
  return navit.make_model(size), batches, lambda b: len(b["labels"])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args(argv)
  logging.getLogger("palix.tasks.packing").setLevel(logging.ERROR)
  tx = optax.adamw(1e-3)
  arms = {}
  for name in ARMS:
    model, batches, count = _arm(name)
    params = nn.meta.unbox(jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0)))["params"]
    step = jax.jit(train_step_lib.make_train_step(
        model, tx, lambda s: 1e-3, jax.tree.map(lambda _: False, params)), donate_argnums=(0,))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    state, metrics = step(state, next(batches))  # compile and warm up
    jax.block_until_ready(metrics)
    arms[name] = dict(step=step, state=state, batches=batches, count=count, images=0, wall=0.0,
                      cpu=0.0)
  for _ in range(args.rounds):
    for arm in arms.values():
      wall, cpu = time.time(), time.process_time()
      for _ in range(args.steps):
        batch = next(arm["batches"])
        arm["state"], metrics = arm["step"](arm["state"], batch)
        arm["images"] += arm["count"](batch)
      jax.block_until_ready(metrics)
      arm["wall"] += time.time() - wall
      arm["cpu"] += time.process_time() - cpu
  print(f"{args.rounds} rounds of {args.steps} steps per arm, {jax.devices()[0].platform}")
  rates = {}
  for name, arm in arms.items():
    rates[name] = (arm["images"] / arm["wall"], arm["images"] / arm["cpu"])
    print(f"{name:9s} {arm['images'] / (args.rounds * args.steps):5.1f} images/step  "
          f"{rates[name][0]:7.1f} images/s  {rates[name][1]:7.1f} images/CPU-s")
  for name in ("packed", "square48"):
    print(f"{name} / pad64: {rates[name][0] / rates['pad64'][0]:.2f}x images/s, "
          f"{rates[name][1] / rates['pad64'][1]:.2f}x images/CPU-s")


if __name__ == "__main__":
  main()
