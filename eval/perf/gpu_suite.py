"""GPU benchmarks of palix, to run side by side with the peers in one device call.

Measures (bf16 compute, random weights, compile excluded):
  * ViT-L/16 at 224 px, one AdamW train step, batch 256 (fp32 params): images/s and model TFLOP/s
    (3 x forward matmul FLOPs, counted by ``palix.model_stats``), for the classic block and for the
    ViT-22B parallel block; attention through ``jax.nn.dot_product_attention`` (cuDNN). The
    classic block's row also splits the step: forward, backward, optimizer, host gap.
  * T5-v1.1-large shape (d 1024, 24+24 layers, ff 2816), greedy decoding with the KV cache,
    batch 64, 256 input tokens, 64 forced new tokens: tokens/s, with fp32 and with bf16 params.
  * PaLI-X at the PaliGemma-3B shape (:func:`paligemma_shape_model`), greedy through
    ``PaliXModel.predict_batch_with_aux``, batch 16, one 224 px image (256 tokens) + 8 prompt
    tokens, 64 forced new tokens, bf16 params built on the device (:func:`init_on_device`).
  * The card's copy bandwidth (``membw``), the ceiling of the decoding rows.
Decoding rows also report ``decode_step_ms`` (generation minus the prefill, per step) and
``bytes_per_step`` (decoder weights, output projection and the whole cache: the least a step
reads), from which ``eval/perf/gpu_table.py`` gets the fraction of the bandwidth limit.

Usage (from the repository root, with it on PYTHONPATH; needs jax, flax, optax, gin-config):
  python eval/perf/gpu_suite.py [--tiny] [--only membw,paligemma,vit,t5_bf16_params,t5,vit_parallel]
  python eval/perf/gpu_suite.py --only paligemma_init [--abstract] [--unrolled]
Prints one ``RESULT {json}`` line per measurement. Peers (timm, HF) are measured by the
project's peer anchor (``shared/bench/peer_anchor.py`` of the shared workspace, not part of this
repository) in a separate process of the same call: ``eval/perf/gpu_check.sh`` runs both and
prints the ratio table (see docs/performance.md).
"""

import argparse
import dataclasses
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from palix import decoding, model_stats, partitioning
from palix.layers.mlp import gelu_tanh
from palix.layers.pooling import GlobalAveragePool
from palix.models.palix_model import PaliXConfig, PaliXModel
from palix.models.t5 import T5Config, T5EncoderDecoder
from palix.models.vit import ParallelBlock, ViT, ViTConfig


def report(name, **values):
  result = {"name": name, **values}
  print("RESULT", json.dumps(result), flush=True)
  return result


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


def bench_vit(name, tiny, iters, breakdown=False, **options):
  """``breakdown``: also time the forward pass alone, forward + backward, and ``iters`` steps
  dispatched back to back (one sync at the end), giving the backward, optimizer and host-gap
  (per-step sync and dispatch) shares of a step."""
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

  def loss_fn(p):
    logits = model.apply({"params": p}, images).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state):
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
  parts = {}
  if breakdown:
    forward, forward_backward = jax.jit(loss_fn), jax.jit(jax.grad(loss_fn))
    for part, fn in (("forward_ms", forward), ("forward_backward_ms", forward_backward)):
      jax.block_until_ready(fn(state[0]))
      parts[part] = 1e3 * median_time(lambda: fn(state[0]), iters)
    parts["optimizer_ms"] = 1e3 * seconds - parts["forward_backward_ms"]
    start = time.perf_counter()
    for _ in range(iters):
      state[0], state[1] = step(state[0], state[1])
    jax.block_until_ready(state[0])
    parts["async_step_ms"] = 1e3 * (time.perf_counter() - start) / iters
    parts["host_gap_ms"] = 1e3 * seconds - parts["async_step_ms"]
  report(name, images_per_s=batch / seconds, train_tflops=3 * fwd / seconds / 1e12,
         step_ms=1e3 * seconds, batch=batch, compile_s=compile_s, **parts)


def tree_bytes(tree):
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def decode_bytes_per_step(text_params, cache):
  """The least a decode step reads: the decoder's weights, the output projection (the embedding
  when tied) and the whole cache (attention reads every cache position under its mask). The token
  embedding lookup reads one row per example and is left out when the logits are untied."""
  logits = text_params.get("logits_dense", text_params["token_embedder"])
  return tree_bytes(text_params["decoder"]) + tree_bytes(logits) + tree_bytes(cache)


def bench_t5(tiny, iters, param_dtype="float32"):
  common = dict(dtype="bfloat16", param_dtype=param_dtype)
  if tiny:
    cfg = T5Config(vocab_size=512, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                   num_encoder_layers=2, num_decoder_layers=2, **common)
    batch, in_len, new = 4, 16, 8
  else:
    cfg = T5Config(vocab_size=32128, emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                   num_encoder_layers=24, num_decoder_layers=24, **common)
    batch, in_len, new = 64, 256, 64
  module = T5EncoderDecoder(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, in_len), 2, cfg.vocab_size)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(1), tokens[:, :4],
                                              tokens[:, :4])["params"])

  def prefill(params, tokens):
    mask = tokens > 0
    encoded = module.apply({"params": params}, module.apply({"params": params}, tokens,
                                                             method=T5EncoderDecoder.embed),
                           mask, method=T5EncoderDecoder.encode)
    return module.apply({"params": params}, encoded, mask, new,
                        method=T5EncoderDecoder.init_decode_cache)

  @jax.jit
  def generate(params, tokens):
    def tokens_to_logits(cache, toks, step):
      return module.apply({"params": params}, cache, toks, step,
                          method=T5EncoderDecoder.decode_step)

    return decoding.greedy(tokens_to_logits, prefill(params, tokens), batch_size=batch,
                           max_decode_len=new, eos_id=-1).tokens

  start = time.perf_counter()
  out = jax.block_until_ready(generate(params, tokens))
  compile_s = time.perf_counter() - start
  assert out.shape == (batch, new)
  seconds = median_time(lambda: generate(params, tokens), iters)
  prefill_jit = jax.jit(prefill)
  cache = jax.block_until_ready(prefill_jit(params, tokens))
  prefill_s = median_time(lambda: prefill_jit(params, tokens), iters)
  suffix = "" if param_dtype == "float32" else "_params_" + param_dtype
  report("palix_t5_large_greedy_bf16" + suffix, tokens_per_s=batch * new / seconds, s=seconds,
         prefill_s=prefill_s, decode_step_ms=1e3 * (seconds - prefill_s) / new,
         bytes_per_step=decode_bytes_per_step(params, cache), param_dtype=param_dtype,
         batch=batch, in_len=in_len, new=new, compile_s=compile_s)


def paligemma_shape_model(tiny=False, scan=True):
  """``(PaliXModel, batch size)`` at the PaliGemma-3B shape, as close as PaLI-X's layout allows.

  Vision: SigLIP So400m/14 at 224 px (width 1152, 27 layers, MLP 4304, 16 heads, tanh GELU,
  learned positions), all 256 tokens projected to the text width. Text: Gemma-2B's widths (d 2048,
  8 heads x 256, gated MLP 16384 with tanh GELU, vocabulary 257,216, tied embedding) in palix's
  T5/UL2 encoder-decoder: the 256 image + 8 prompt tokens go through an 18-layer encoder (each
  prefix token sees 18 layers, as in Gemma), answers through an 18-layer decoder with
  cross-attention. What differs from Gemma: full multi-head K/V (Gemma-2B: one K/V head), a
  cross-attention block per decoder layer, T5 relative position bias instead of RoPE, RMSNorm
  without Gemma's (1 + w) scale, so about 5.5B parameters instead of 2.9B. bf16 compute and
  parameters; ``scan`` stacks the layers (see docs/performance.md: compile time).
  """
  common = dict(dtype="bfloat16", param_dtype="bfloat16", scan=scan)
  if tiny:
    vit = ViTConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14, image_size=56)
    t5 = T5Config(vocab_size=1000, emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128,
                  num_encoder_layers=2, num_decoder_layers=2)
    batch = 2
  else:
    vit = ViTConfig(variant="So400m/14", image_size=224)
    t5 = T5Config(vocab_size=257216, emb_dim=2048, num_heads=8, head_dim=256, mlp_dim=16384,
                  num_encoder_layers=18, num_decoder_layers=18)
    batch = 16
  vit = dataclasses.replace(vit, mlp_activation=gelu_tanh, **common)
  t5 = dataclasses.replace(t5, activation=gelu_tanh, logits_via_embedding=True, **common)
  model = PaliXModel(PaliXConfig(vit=vit, t5=t5), image_size=vit.image_size, num_images=1,
                     max_input_len=8, max_target_len=64 if not tiny else 8, eos_id=-1)
  return model, batch


def init_on_device(model, rng, partitioner=None, *, compile_only=False):
  """``model``'s parameters from one jitted program that writes them, in the parameters' dtype,
  straight into their sharded layout on the devices (``out_shardings`` from the logical axis
  names); nothing is built on the host and nothing is copied.

  Returns ``(params, timings)``: seconds of ``eval_shape``, lowering, compiling and running the
  init. ``compile_only``: stop after compiling (``params`` is None), to measure a model too big
  for this machine's memory.
  """
  partitioner = partitioner or partitioning.Partitioner()
  timings = {}
  start = time.perf_counter()
  boxed = jax.eval_shape(model.get_initial_variables, rng)["params"]
  timings["eval_shape_s"] = time.perf_counter() - start
  shardings = partitioner.param_shardings(boxed)
  init = jax.jit(lambda r: nn.meta.unbox(model.get_initial_variables(r)["params"]),
                 out_shardings=shardings)
  start = time.perf_counter()
  lowered = init.lower(rng)
  timings["lower_s"] = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  timings["compile_s"] = time.perf_counter() - start
  if compile_only:
    return None, timings
  start = time.perf_counter()
  params = jax.block_until_ready(compiled(rng))
  timings["run_s"] = time.perf_counter() - start
  return params, timings


def paligemma_batch(model, batch, rng):
  k1, k2 = jax.random.split(rng)
  size = model.image_size
  vocab = model.config.t5.vocab_size
  return {"images": jax.random.normal(k1, (batch, 1, size, size, 3), jnp.float32),
          "image_mask": jnp.ones((batch, 1), jnp.int32),
          "encoder_input_tokens": jax.random.randint(k2, (batch, model.max_input_len), 2, vocab)}


def bench_paligemma_init(tiny, scan, abstract):
  model, _ = paligemma_shape_model(tiny, scan)
  params, timings = init_on_device(model, jax.random.PRNGKey(0), compile_only=abstract)
  shapes = nn.meta.unbox(jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0)))
  report("palix_paligemma_init" + ("_scan" if scan else "_unrolled"),
         params=model_stats.count_params(shapes["params"]),
         param_bytes=tree_bytes(shapes["params"]), executed=params is not None, **timings)


def bench_paligemma(tiny, iters, scan=True):
  """Returns ``(result, model, params, inputs, tokens)`` (the test checks them)."""
  model, batch = paligemma_shape_model(tiny, scan)
  new = model.max_target_len
  params, timings = init_on_device(model, jax.random.PRNGKey(0))
  inputs = paligemma_batch(model, batch, jax.random.PRNGKey(1))

  def generate():
    return model.predict_batch_with_aux(params, inputs, max_decode_len=new)[0]

  start = time.perf_counter()
  out = jax.block_until_ready(generate())
  compile_s = time.perf_counter() - start
  assert out.shape == (batch, new)
  seconds = median_time(generate, iters)
  prefill = jax.jit(lambda p, b: model.decoder_state(p, b, new)[0])
  cache = jax.block_until_ready(prefill(params, inputs))
  prefill_s = median_time(lambda: prefill(params, inputs), iters)
  result = report(
      "palix_paligemma3b_shape_greedy_bf16", tokens_per_s=batch * new / seconds, s=seconds,
      prefill_s=prefill_s, decode_step_ms=1e3 * (seconds - prefill_s) / new,
      bytes_per_step=decode_bytes_per_step(params["text"], cache),
      params=model_stats.count_params(params), param_bytes=tree_bytes(params), batch=batch,
      new=new, encoder_tokens=cache["encoder_mask"].shape[1], compile_s=compile_s, init=timings)
  return result, model, params, inputs, out


def bench_membw(tiny, iters):
  """Copy bandwidth (bytes read + written per second) of a large bf16 array."""
  n = (1 << 20) if tiny else (1 << 31)  # 2 MiB or 4 GiB
  x = jnp.ones((n,), jnp.bfloat16)
  copy = jax.jit(lambda a: a + jnp.bfloat16(1))
  jax.block_until_ready(copy(x))
  seconds = median_time(lambda: copy(x), iters)
  report("membw_copy", bytes_per_s=2 * x.nbytes / seconds, bytes=2 * x.nbytes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--only", default="membw,paligemma,vit,t5_bf16_params,t5,vit_parallel")
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--abstract", action="store_true",
                      help="paligemma_init: lower and compile only, create no parameters")
  parser.add_argument("--unrolled", action="store_true",
                      help="paligemma, paligemma_init: unrolled layers instead of nn.scan")
  args = parser.parse_args()
  only = set(args.only.split(","))
  print("jax", jax.__version__, jax.devices(), flush=True)
  report("suite", tiny=args.tiny, jax=jax.__version__, device=str(jax.devices()[0].device_kind))
  if "membw" in only:
    bench_membw(args.tiny, args.iters)
  # In order of need: PaLI-X was never measured on the card, so a call cut short still has it.
  if "paligemma_init" in only:
    bench_paligemma_init(args.tiny, not args.unrolled, args.abstract)
  if "paligemma" in only:
    bench_paligemma(args.tiny, args.iters, scan=not args.unrolled)
  if "vit" in only:
    bench_vit("palix_vit_l16_train_bf16", args.tiny, args.iters, breakdown=True)
  if "t5_bf16_params" in only:
    bench_t5(args.tiny, args.iters, param_dtype="bfloat16")
  if "t5" in only:
    bench_t5(args.tiny, args.iters)
  if "vit_parallel" in only:
    bench_vit("palix_vit_l16_parallel_qknorm_train_bf16", args.tiny, args.iters,
              block=ParallelBlock, qk_norm=True, qkv_bias=False, norm_bias=False)


if __name__ == "__main__":
  main()
