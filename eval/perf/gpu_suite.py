"""GPU benchmarks of palix, to run side by side with the peers in one device call.

Measures (bf16 compute, fp32 params, random weights):
  * ViT-L/16 at 224 px, one AdamW train step, batch 256: images/s and model TFLOP/s
    (3 x forward matmul FLOPs, counted by ``palix.model_stats``), for the classic block and for the
    ViT-22B parallel block; attention through ``jax.nn.dot_product_attention`` (cuDNN).
  * T5-v1.1-large shape (d 1024, 24+24 layers, ff 2816), greedy decoding with the KV cache,
    batch 64, 256 input tokens, 64 forced new tokens: tokens/s.

Usage (from the repository root; needs jax, flax, optax, gin-config):
  python eval/perf/gpu_suite.py [--tiny] [--only vit,vit_parallel,t5]
Prints one ``RESULT {json}`` line per measurement. Peers (timm, HF) are measured by the
project's peer anchor (``shared/bench/peer_anchor.py`` of the shared workspace, not part of this
repository) in a separate process of the same call (see docs/performance.md).
"""

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from palix import decoding, model_stats
from palix.layers.pooling import GlobalAveragePool
from palix.models.t5 import T5Config, T5EncoderDecoder
from palix.models.vit import ParallelBlock, ViT, ViTConfig


def report(name, **values):
  print("RESULT", json.dumps({"name": name, **values}), flush=True)


def median_time(fn, iters):
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


class Classifier(nn.Module):
  config: ViTConfig
  num_classes: int = 1000

  @nn.compact
  def __call__(self, images):
    pooled, _ = ViT(self.config, name="vit")(images)
    return nn.Dense(self.num_classes, dtype=jnp.bfloat16, name="head")(pooled)


def bench_vit(name, tiny, iters, **options):
  if tiny:
    cfg = ViTConfig(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=16, image_size=64,
                    **options)
    batch, res = 4, 64
  else:
    cfg = ViTConfig(variant="L", patch_size=16, image_size=224, **options)
    batch, res = 256, 224
  cfg = ViTConfig(**{**cfg.__dict__, "pool": GlobalAveragePool, "dtype": "bfloat16",
                     "attention_impl": None if tiny else "cudnn"})
  model = Classifier(cfg)
  images = jax.random.normal(jax.random.PRNGKey(0), (batch, res, res, 3), jnp.bfloat16)
  labels = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, 1000)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(2), images[:1])["params"])
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = model.apply({"params": p}, images).astype(jnp.float32)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  state = [params, opt_state]

  def run():
    state[0], state[1] = step(state[0], state[1])
    return state[0]

  start = time.perf_counter()
  jax.block_until_ready(run())
  compile_s = time.perf_counter() - start
  seconds = median_time(run, iters)
  fwd = model_stats.forward_flops(lambda p, x: model.apply({"params": p}, x),
                                  model_stats.abstract(params), jax.ShapeDtypeStruct(
                                      images.shape, images.dtype))
  report(name, images_per_s=batch / seconds, train_tflops=3 * fwd / seconds / 1e12,
         step_ms=1e3 * seconds, batch=batch, compile_s=compile_s)


def bench_t5(tiny, iters):
  if tiny:
    cfg = T5Config(vocab_size=512, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                   num_encoder_layers=2, num_decoder_layers=2, dtype="bfloat16")
    batch, in_len, new = 4, 16, 8
  else:
    cfg = T5Config(vocab_size=32128, emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                   num_encoder_layers=24, num_decoder_layers=24, dtype="bfloat16")
    batch, in_len, new = 64, 256, 64
  module = T5EncoderDecoder(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, in_len), 2, cfg.vocab_size)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(1), tokens[:, :4], tokens[:, :4])["params"])

  @jax.jit
  def generate(params, tokens):
    mask = tokens > 0
    encoded = module.apply({"params": params}, module.apply({"params": params}, tokens,
                                                             method=T5EncoderDecoder.embed),
                           mask, method=T5EncoderDecoder.encode)
    cache = module.apply({"params": params}, encoded, mask, new,
                         method=T5EncoderDecoder.init_decode_cache)

    def tokens_to_logits(cache, toks, step):
      return module.apply({"params": params}, cache, toks, step,
                          method=T5EncoderDecoder.decode_step)

    return decoding.greedy(tokens_to_logits, cache, batch_size=batch, max_decode_len=new,
                           eos_id=-1).tokens

  start = time.perf_counter()
  out = jax.block_until_ready(generate(params, tokens))
  compile_s = time.perf_counter() - start
  assert out.shape == (batch, new)
  seconds = median_time(lambda: generate(params, tokens), iters)
  report("palix_t5_large_greedy_bf16", tokens_per_s=batch * new / seconds, s=seconds,
         batch=batch, in_len=in_len, new=new, compile_s=compile_s)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--only", default="vit,vit_parallel,t5")
  parser.add_argument("--iters", type=int, default=10)
  args = parser.parse_args()
  only = set(args.only.split(","))
  print("jax", jax.__version__, jax.devices(), flush=True)
  if "vit" in only:
    bench_vit("palix_vit_l16_train_bf16", args.tiny, args.iters)
  if "vit_parallel" in only:
    bench_vit("palix_vit_l16_parallel_qknorm_train_bf16", args.tiny, args.iters,
              block=ParallelBlock, qk_norm=True, qkv_bias=False, norm_bias=False)
  if "t5" in only:
    bench_t5(args.tiny, args.iters)


if __name__ == "__main__":
  main()
