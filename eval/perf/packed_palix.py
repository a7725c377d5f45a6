"""Training throughput of packed PaLI-X batches against batch parts, on the demo's mixture.

    python -m palix.eval.perf.packed_palix [--rounds 3] [--steps 10] [--gin.NAME=VALUE ...]

Both arms train the demo's PaLI-X (``gin/experiments/demo_{model,train}.gin``: the same model,
optimizer and per-task image sides) on ``embedded_mix`` with jitted palix train steps, in one
process:

* ``packed``: the demo's packed stream (``palix.tasks.packed_batches``: several examples per
  row, images at their task's side as patch sequences, attention within each example);
* ``parts``: one example per row, 32 rows per step split into one part per task geometry
  (``batch_parts``: each task's own image count, ``FEATURE_LENGTHS_BY_TASK`` lengths and
  ``IMAGE_SIZE_BY_TASK`` side), the demo's path before packing.

After one warm-up step each (compilation), the arms take turns, ``--steps`` steps per turn for
``--rounds`` rounds, so a load change on the machine hits both. Each step's time includes fetching
its batch (the input pipelines run in the background; their CPU time counts too). Prints, per
arm, examples per step, examples/s of wall time and per CPU-second (process CPU time, all
threads: steadier than wall time on a shared machine), the non-pad share of the ViT, encoder
and decoder tokens the steps computed on, and as its last line the ratios. ``--gin.`` flags
change the demo's configuration for both arms (e.g. other ``packed.PackedRows`` sizes).
"""

import argparse
import logging
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from palix import config as palix_config
from palix.training import train_step as train_step_lib
from palix.training.train_state import TrainState

GIN_FILES = ("runs/pretrain.gin", "experiments/demo_model.gin", "experiments/demo_train.gin")
PARTS_ROWS = 32
SEQUENCES = ("vit", "encoder", "decoder")


def _batches(arm: str):
  """The arm's batch iterator, with the demo's gin bindings."""
  import gin  # pylint: disable=g-import-not-at-top
  from palix.training import data  # pylint: disable=g-import-not-at-top
  kw = dict(split="train", seed=0, shuffle=True, repeat=True, start_step=0, shard_index=0,
            num_shards=1, feature_lengths=dict(gin.query_parameter("%TASK_FEATURE_LENGTHS")))
  name = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  if arm == "packed":
    return data.task_batches(name, batch_size=gin.query_parameter("%BATCH_SIZE"), **kw)
  return data.task_batches(name, batch_size=PARTS_ROWS, packing=None, batch_parts=True, **kw)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  bindings, rest = palix_config.split_gin_bindings(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  logging.getLogger("palix.tasks.packed_examples").setLevel(logging.ERROR)
  palix_config.parse_gin(GIN_FILES, ["MODEL_DIR = '/tmp/unused'", *bindings], finalize=False)
  from palix.models.palix_model import PaliXModel  # pylint: disable=g-import-not-at-top
  from palix.training import optimizers  # pylint: disable=g-import-not-at-top
  model = PaliXModel()
  optimizer = optimizers.Optimizer()
  tx = optimizer.make()
  params = nn.meta.unbox(jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0)))["params"]
  arms = {}
  for name in ("packed", "parts"):
    batches = _batches(name)
    step = jax.jit(train_step_lib.make_train_step(
        model, tx, optimizer.learning_rate_fn, jax.tree.map(lambda _: False, params)),
        donate_argnums=(0,))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params),
                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)))
    state, metrics = step(state, next(batches))  # compile and warm up
    jax.block_until_ready(metrics)
    arms[name] = dict(step=step, state=state, batches=batches, examples=0.0, wall=0.0, cpu=0.0,
                      tokens={s: 0.0 for s in SEQUENCES}, capacity={s: 0.0 for s in SEQUENCES})
  for _ in range(args.rounds):
    for arm in arms.values():
      wall, cpu = time.time(), time.process_time()
      for _ in range(args.steps):
        arm["state"], metrics = arm["step"](arm["state"], next(arm["batches"]))
        metrics = jax.device_get(metrics)
        arm["examples"] += float(metrics["num_examples"])
        for s in SEQUENCES:
          arm["tokens"][s] += float(metrics[f"num_{s}_tokens"])
          arm["capacity"][s] += float(metrics[f"num_{s}_capacity"])
      arm["wall"] += time.time() - wall
      arm["cpu"] += time.process_time() - cpu
  print(f"{args.rounds} rounds of {args.steps} steps per arm, {jax.devices()[0].platform}")
  rates, fills = {}, {}
  for name, arm in arms.items():
    rates[name] = (arm["examples"] / arm["wall"], arm["examples"] / arm["cpu"])
    fills[name] = " ".join(f"{s} {100 * arm['tokens'][s] / arm['capacity'][s]:.1f}%"
                           for s in SEQUENCES)
    print(f"{name:7s} {arm['examples'] / (args.rounds * args.steps):5.1f} examples/step  "
          f"{1000 * arm['wall'] / (args.rounds * args.steps):6.0f} ms/step  "
          f"{rates[name][0]:6.1f} examples/s  {rates[name][1]:6.1f} examples/CPU-s  "
          f"non-pad tokens: {fills[name]}")
  print(f"packed / parts: {rates['packed'][0] / rates['parts'][0]:.2f}x examples/s, "
        f"{rates['packed'][1] / rates['parts'][1]:.2f}x examples/CPU-s; non-pad tokens "
        f"packed {fills['packed']} (parts {fills['parts']})")
  return np.array([rates["packed"][1] / rates["parts"][1]])


if __name__ == "__main__":
  main()
