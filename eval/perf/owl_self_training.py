"""OWL-ST self-training throughput with and without token dropping and instance selection.

    python -m palix.eval.perf.owl_self_training [--batch 32] [--steps 10] [--rounds 3]
        [--gin_file models/owl/owl_tiny.gin]

The tiny OWL detector's full training step (forward, Hungarian matching on the host, losses,
backward, AdamW) on the same batches of pseudo-labelled-like data (the captioned canvases with
their true boxes and class-name queries, 2x2 mosaics with probability 0.3, as
``experiments/owl_detector.gin``), in four settings:

* ``all tokens``: every patch enters the ViT and reaches the heads (the baseline);
* ``drop 50%``: token dropping, the half of the patches with the lowest pixel variance never
  enters the ViT (``OwlModel.keep_fraction = 0.5``);
* ``top-24``: instance selection only, the 24 tokens with the highest objectness reach the
  heads and the matching (``OwlModel.objectness_top_k = 24``);
* ``drop 50% + top-24``: both (the self-training recipe).

Each setting is compiled first, then timed for ``--steps`` steps; the settings take turns for
``--rounds`` rounds and the best round counts (the machine is shared; the fastest round is the
least disturbed). Prints examples/s and the ratio to ``all tokens`` measured in the same run.
"""

import argparse
import time

import flax.linen as nn
import gin
import jax
import numpy as np
import optax

from palix import config as palix_config

SETTINGS = {"all tokens": (None, None), "drop 50%": (0.5, None), "top-24": (None, 24),
            "drop 50% + top-24": (0.5, 24)}
LENGTHS = {"queries": 16, "query_length": 4, "instances": 16}


def build_model(gin_file: str):
  gin.clear_config()
  palix_config.parse_gin([gin_file], [], finalize=False)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  gin.clear_config()
  return model


def batches(batch_size: int, count: int, image_size: int):
  from palix.tasks import box_batches  # pylint: disable=g-import-not-at-top  # the data layer
  stream = box_batches.get_box_batches(
      "shapes_captions", split="train", batch_size=batch_size, feature_lengths=LENGTHS,
      image_size=image_size, mosaic_sizes=(1, 2), mosaic_probabilities=(0.7, 0.3),
      prefetch=False)
  return [next(stream) for _ in range(count)]


def make_step(model, tx):

  @jax.jit
  def step(params, opt_state, batch, rng):
    (loss, _), grads = jax.value_and_grad(lambda p: model.loss_fn(p, batch, rng),
                                          has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--gin_file", default="models/owl/owl_tiny.gin")
  args = parser.parse_args(argv)
  base = build_model(args.gin_file)
  data = batches(args.batch, args.steps, base.image_size)
  params = nn.meta.unbox(base.get_initial_variables(jax.random.key(0))["params"])
  tx = optax.adamw(1e-4)
  runs = {}
  for name, (keep, top_k) in SETTINGS.items():
    model = build_model(args.gin_file)
    model.keep_fraction, model.objectness_top_k = keep, top_k
    step = make_step(model, tx)
    state = (params, tx.init(params))
    jax.block_until_ready(step(*state, data[0], jax.random.key(0)))  # compile
    runs[name] = (step, state)
  best = {name: 0.0 for name in SETTINGS}
  for _ in range(args.rounds):
    for name, (step, (p, o)) in runs.items():
      start = time.perf_counter()
      for k, batch in enumerate(data):
        p, o, loss = step(p, o, batch, jax.random.key(k))
      jax.block_until_ready(loss)
      best[name] = max(best[name], args.batch * len(data) / (time.perf_counter() - start))
  patches = base.num_patches()
  print(f"OWL self-training step, batch {args.batch}, {patches} patches of "
        f"{base.image_size} px, {jax.devices()[0].platform}, best of {args.rounds} rounds "
        f"x {args.steps} steps")
  for name, rate in best.items():
    print(f"  {name:<20} {rate:8.1f} examples/s  {rate / best['all tokens']:5.2f}x")


if __name__ == "__main__":
  main()
