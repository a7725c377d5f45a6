"""Trains a tiny Soft MoE ViT classifier on one device and on a (2, 2, 2) mesh; prints JSON.

``python soft_moe_sharded_runs.py`` expects 8 (fake) CPU devices (used by
test_soft_moe_sharding.py). Parameters are laid out by ``Partitioner.param_shardings`` (the logical
rules, so the experts follow the ``expert`` rule), the step is traced under the partitioner's
context (activation constraints on) and both runs see the same batches, so the losses must agree.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from palix import partitioning  # noqa: E402
from palix.layers import initializers as inits  # noqa: E402
from palix.layers.pooling import GlobalAveragePool  # noqa: E402
from palix.layers.soft_moe import MOE_METRICS, SoftMoeConfig, collect_metrics  # noqa: E402
from palix.models.vit import ViT, ViTConfig  # noqa: E402

STEPS = 4
BATCH = 8
CONFIG = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=32,
                   pool=GlobalAveragePool, scan=True,
                   moe=SoftMoeConfig(num_experts=4, slots_per_expert=2, last_n_layers=1))


class Classifier(nn.Module):

  @nn.compact
  def __call__(self, images):
    pooled, _ = ViT(CONFIG, name="vit")(images)
    return nn.Dense(10, kernel_init=nn.with_logical_partitioning(inits.lecun_normal,
                                                                 ("embed", "vocab")),
                    bias_init=nn.with_logical_partitioning(inits.zeros, ("vocab",)),
                    name="head")(pooled)


def batches():
  rng = np.random.RandomState(0)
  for _ in range(STEPS):
    yield (rng.uniform(-1, 1, (BATCH, 32, 32, 3)).astype(np.float32),
           rng.randint(0, 10, (BATCH,)).astype(np.int32))


def run(mesh_shape, devices):
  part = partitioning.Partitioner(mesh_shape=mesh_shape, devices=devices)
  model = Classifier()
  tx = optax.adam(3e-3)

  def loss_fn(params, images, labels):
    logits, state = model.apply({"params": params}, images, mutable=MOE_METRICS)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, collect_metrics(state)

  def step(params, opt_state, images, labels):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics["moe/dispatch_max"]

  example = jnp.zeros((1, 32, 32, 3))
  # Initialised outside the mesh context, as palix.training.train_state does.
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), example)["params"]
  shardings = part.param_shardings(boxed)
  params = jax.jit(lambda k: nn.meta.unbox(model.init(k, example)["params"]),
                   out_shardings=shardings)(jax.random.PRNGKey(0))
  opt_state = jax.jit(tx.init)(params)
  batch_sharding = part.batch_sharding(4), part.batch_sharding(1)
  with part.context():
    step_fn = jax.jit(step, in_shardings=(shardings, None) + batch_sharding,
                      out_shardings=(shardings, None, part.replicated, part.replicated))
    losses, dispatch_max, compiled = [], [], None
    for images, labels in batches():
      images = jax.device_put(images, batch_sharding[0])
      labels = jax.device_put(labels, batch_sharding[1])
      # Compiled once, explicitly, so that its HLO can be inspected too.
      compiled = compiled or step_fn.lower(params, opt_state, images, labels).compile()
      params, opt_state, loss, dmax = compiled(params, opt_state, images, labels)
      losses.append(float(loss))
      dispatch_max.append(float(dmax))
    hlo = compiled.as_text()
  moe = params["vit"]["Transformer"]["moe_blocks"]["block"]["moe"]
  return {
      "losses": losses, "dispatch_max": dispatch_max, "mesh": dict(part.mesh.shape),
      "specs": {name: str(tuple(leaf.sharding.spec)) for name, leaf in
                (("wi_kernel", moe["wi"]["kernel"]), ("wo_kernel", moe["wo"]["kernel"]),
                 ("mu", moe["mu"]))},
      "all_to_all": "all-to-all" in hlo,
  }


def main():
  devices = jax.devices()
  results = {"num_devices": len(devices), "one_device": run((1, 1, 1), devices[:1]),
             "mesh": run((2, 2, 2), devices)}
  print("RESULT " + json.dumps(results))


if __name__ == "__main__":
  main()
