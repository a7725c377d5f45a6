"""Soft MoE ViT-B/16 against its dense counterpart: forward (CPU) or AdamW training step (GPU).

    python -m palix.eval.perf.soft_moe [--mode forward|train] [--experts E] [--batch B]
                                       [--iters 5] [--rounds 3] [--dtype float32|bfloat16]
                                       [--tiny]
    # on a GPU machine, from the repository root (gin-config importable):
    PYTHONPATH=. python3 eval/perf/soft_moe.py --mode train

Both models are ViT-B/16 at 224 px with QK-norm, global average pooling and a 1000-class head;
the Soft MoE one replaces the MLPs of the last 6 blocks by Soft MoE layers of ``E`` experts with
``128 / E`` slots each (128 slots per image, as the paper's B/16 with 128 experts of one slot).
Counted forward FLOPs per image are printed for both (``palix.model_stats``): the MoE model does
~9% fewer (128 slots instead of 196 tokens in its MoE layers) but adds routing softmaxes and
data movement that are not counted, which is what the timing shows.

The timed calls alternate between the two models for ``--rounds`` rounds of ``--iters`` calls
(compile and one warm-up call excluded); the median seconds per call of each are compared, and
the ratio printed is MoE time / dense time (> 1: the MoE is slower). ``--experts`` defaults to
128 on a GPU and 8 on a CPU: 128 experts are 3.7B parameters (15 GB in float32), more than a
shared CPU machine should hold; FLOPs do not depend on it. ``--tiny`` swaps in a 2-block width-64
model on 32 px images (a smoke run).
"""

import argparse
import functools
import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from palix import model_stats
from palix.layers.pooling import GlobalAveragePool
from palix.layers.soft_moe import SoftMoeConfig
from palix.models.vit import ViT, ViTConfig

NUM_CLASSES = 1000
TOTAL_SLOTS = 128


class _Classifier(nn.Module):
  """ViT (pooled) + linear head; the training step's model."""
  config: ViTConfig

  @nn.compact
  def __call__(self, images):
    pooled, _ = ViT(self.config, name="vit")(images)
    return nn.Dense(NUM_CLASSES, dtype=jnp.float32, name="head")(pooled.astype(jnp.float32))


def configs(tiny: bool, experts: int, dtype: str, attention_impl):
  """``(dense, soft_moe)`` ViTConfigs and the image side."""
  if tiny:
    base = dict(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=8, image_size=32)
    last_n, slots = 1, 16
  else:
    base = dict(variant="B", patch_size=16, image_size=224)
    last_n, slots = 6, TOTAL_SLOTS
  if slots % experts:
    raise ValueError(f"--experts {experts} must divide the {slots} slots per image")
  common = dict(base, qk_norm=True, pool=GlobalAveragePool, dtype=dtype,
                attention_impl=attention_impl)
  moe = SoftMoeConfig(num_experts=experts, slots_per_expert=slots // experts,
                      last_n_layers=last_n)
  return ViTConfig(**common).resolved(), ViTConfig(**common, moe=moe).resolved(), base["image_size"]


def _seconds_per_call(fn, iters):
  start = time.perf_counter()
  for _ in range(iters):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / iters


def build(config: ViTConfig, mode: str, images, labels):
  """A no-argument callable running one forward or one training step, already compiled and
  warmed up, plus its parameter count and forward FLOPs per image."""
  model = _Classifier(config)
  params = jax.jit(lambda k: nn.meta.unbox(model.init(k, images[:1])["params"]))(
      jax.random.PRNGKey(0))
  flops = model_stats.forward_flops(lambda p, x: model.apply({"params": p}, x),
                                    model_stats.abstract(params), model_stats.abstract(images[:1]))
  count = model_stats.count_params(params)
  if mode == "forward":
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
    run = lambda: forward(params, images)
  else:
    tx = optax.adamw(1e-4)
    state = {"params": params, "opt": jax.jit(tx.init)(params)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))  # updated in place
    def step(params, opt_state):
      def loss_fn(p):
        logits = model.apply({"params": p}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    def run():
      state["params"], state["opt"] = step(state["params"], state["opt"])
      return state["params"]
  jax.block_until_ready(run())  # compile
  jax.block_until_ready(run())  # warm-up
  return run, count, flops


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("forward", "train"), default="forward")
  parser.add_argument("--experts", type=int, help="default: 128 on a GPU, 8 on a CPU")
  parser.add_argument("--batch", type=int, help="default: 256 on a GPU, 8 on a CPU")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                      help="compute dtype (parameters stay float32); default: bfloat16 on a GPU")
  parser.add_argument("--tiny", action="store_true", help="2-block width-64 model on 32 px")
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  gpu = device.platform == "gpu"
  experts = args.experts or (128 if gpu else 8)
  if args.tiny:
    experts = args.experts or 4
  batch = args.batch or (256 if gpu else 8)
  dtype = args.dtype or ("bfloat16" if gpu else "float32")
  attention_impl = "cudnn" if gpu and dtype == "bfloat16" and not args.tiny else None
  try:
    dense_cfg, moe_cfg, size = configs(args.tiny, experts, dtype, attention_impl)
  except ValueError as error:
    parser.error(str(error))
  rng = np.random.RandomState(0)
  images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
  labels = jnp.asarray(rng.randint(0, NUM_CLASSES, (batch,)), jnp.int32)

  start = time.perf_counter()
  dense, dense_params, dense_flops = build(dense_cfg, args.mode, images, labels)
  moe, moe_params, moe_flops = build(moe_cfg, args.mode, images, labels)
  setup_s = time.perf_counter() - start
  times = {"dense": [], "moe": []}
  for _ in range(args.rounds):
    times["dense"].append(_seconds_per_call(dense, args.iters))
    times["moe"].append(_seconds_per_call(moe, args.iters))
  dense_s, moe_s = (statistics.median(times[k]) for k in ("dense", "moe"))

  name = "tiny ViT (2x64, 32px/8)" if args.tiny else "ViT-B/16 224px"
  passes = 3 if args.mode == "train" else 1  # a training step is ~3 forward passes of matmuls
  print(f"model: {name}, GAP + {NUM_CLASSES}-class head; Soft MoE: {experts} experts x "
        f"{moe_cfg.moe.slots_per_expert} slots in the last {moe_cfg.moe.last_n_layers} blocks")
  print(f"mode: {args.mode}, batch {batch}, dtype {dtype} (float32 parameters), {args.rounds} "
        f"alternating rounds of {args.iters} calls, medians; setup (init + compile) {setup_s:.1f} s")
  print(f"device: jax {device.platform} ({device.device_kind}), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; jax {jax.__version__}")
  for label, params, flops, seconds in (("dense", dense_params, dense_flops, dense_s),
                                        ("soft_moe", moe_params, moe_flops, moe_s)):
    print(f"{label}: {params:,} params, {flops / 1e9:.4g} GFLOPs/img forward, "
          f"{seconds * 1e3:.1f} ms/call, {batch / seconds:.1f} img/s, "
          f"{passes * flops * batch / seconds / 1e12:.2f} model TFLOP/s")
  print(f"round times (s/call): dense {['%.4f' % t for t in times['dense']]}, "
        f"soft_moe {['%.4f' % t for t in times['moe']]}")
  print(f"ratio soft_moe/dense time: {moe_s / dense_s:.3f} (counted FLOPs ratio "
        f"{moe_flops / dense_flops:.3f})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
