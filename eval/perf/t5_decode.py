"""Greedy-decoding throughput: palix (jit, KV cache) vs Hugging Face ``generate`` (PyTorch).

Both run the same random T5 (t5-small-like shape by default: d_model 512, d_ff 1024, 8 heads of 64,
6+6 layers, vocab 32128; gated-GELU) on the same weights (palix's are imported from the HF model
with ``palix.interop.hf_t5``), the same prompts and the same forced output length (HF:
``min_new_tokens = max_new_tokens``; palix: ``eos_id=-1``, so no row stops early).

Two figures per framework, compile/warm-up excluded (median of ``--repeats`` timed runs, palix
and HF timed alternately so that both see the same background load):

* end to end: encoder + decoding (HF ``generate`` on the prompts; palix one jitted function);
* decode only: the encoder output precomputed (HF ``generate(encoder_outputs=...)``).

Usage: ``python -m palix.eval.perf.t5_decode [--tiny] [--batch 8] [--input-len 64]
[--output-len 32] [--repeats 3]``. On a machine shared with other jobs, pin the run to one core
(``taskset -c 1 python -m ...``): both XLA and PyTorch then use one thread, and PyTorch's
multi-threaded kernels no longer stall on oversubscribed cores (which inflates its times
several-fold and makes the ratio meaningless).
"""

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from palix import decoding
from palix.interop import hf_t5
from palix.models.t5 import T5EncoderDecoder

T5_SMALL_LIKE = dict(vocab_size=32128, d_model=512, d_ff=1024, num_heads=8, d_kv=64, num_layers=6,
                     num_decoder_layers=6)
TINY = dict(vocab_size=512, d_model=64, d_ff=128, num_heads=4, d_kv=16, num_layers=2,
            num_decoder_layers=2)


def _hf_model(sizes, seed=0):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  config = transformers.T5Config(feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                 tie_word_embeddings=False, decoder_start_token_id=0,
                                 eos_token_id=1, pad_token_id=0, **sizes)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():  # transformers 5 ties lm_head even for T5.1.1 configs: give it its own
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn(sizes["vocab_size"], sizes["d_model"]) * sizes["d_model"] ** -0.5)
  return model


def _interleaved_median_seconds(fns, repeats):
  """Median wall time of each function, timed in turn (a, b, a, b, ...) so that both see the same
  background load on a shared machine."""
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


class PalixDecoder:
  """Jitted end-to-end and decode-only greedy generation with forced length (``eos_id=-1``)."""

  def __init__(self, config, params, output_len):
    self.module = T5EncoderDecoder(config)
    self.params = jax.device_put(params)
    self.output_len = output_len
    self.encode = jax.jit(self._encode)
    self.generate = jax.jit(lambda p, t: self._decode(p, self._encode(p, t), t > 0))
    self.decode_only = jax.jit(self._decode)

  def _encode(self, params, tokens):
    return self.module.apply({"params": params}, tokens,
                             method=lambda m, t: m.encode(m.embed(t), t > 0))

  def _decode(self, params, encoded, mask):
    cache = self.module.apply({"params": params}, encoded, mask, self.output_len,
                              method=T5EncoderDecoder.init_decode_cache)
    step = functools.partial(self.module.apply, {"params": params},
                             method=T5EncoderDecoder.decode_step)
    return decoding.greedy(step, cache, batch_size=encoded.shape[0],
                           max_decode_len=self.output_len, eos_id=-1).tokens


def run(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="a tiny model and batch (smoke test)")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--input-len", type=int, default=None)
  parser.add_argument("--output-len", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  sizes = TINY if args.tiny else T5_SMALL_LIKE
  batch = args.batch or (2 if args.tiny else 8)
  input_len = args.input_len or (16 if args.tiny else 64)
  output_len = args.output_len or (8 if args.tiny else 32)

  import torch  # pylint: disable=g-import-not-at-top
  from transformers.modeling_outputs import BaseModelOutput  # pylint: disable=g-import-not-at-top
  hf = _hf_model(sizes)
  state = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
  config = hf_t5.t5_config_from_hf(hf.config)
  palix = PalixDecoder(config, hf_t5.params_from_hf_state_dict(state, config), output_len)

  rs = np.random.RandomState(0)
  tokens = rs.randint(2, sizes["vocab_size"], size=(batch, input_len)).astype(np.int32)
  tokens_t = torch.from_numpy(tokens.astype(np.int64))
  mask_t = torch.ones_like(tokens_t)
  hf_kwargs = dict(do_sample=False, num_beams=1, max_new_tokens=output_len,
                   min_new_tokens=output_len, attention_mask=mask_t)

  def hf_generate():
    with torch.no_grad():
      return hf.generate(input_ids=tokens_t, **hf_kwargs)

  with torch.no_grad():
    hf_encoded = hf.get_encoder()(input_ids=tokens_t, attention_mask=mask_t).last_hidden_state

  def hf_decode_only():
    with torch.no_grad():
      return hf.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hf_encoded),
                         **hf_kwargs)

  encoded = jax.block_until_ready(palix.encode(palix.params, tokens))
  mask = jnp.asarray(tokens > 0)
  start = time.perf_counter()
  ours = np.asarray(palix.generate(palix.params, tokens))
  compile_s = time.perf_counter() - start
  jax.block_until_ready(palix.decode_only(palix.params, encoded, mask))
  theirs = hf_generate().numpy()[:, 1:]
  hf_decode_only()

  results = {
      "end to end": _interleaved_median_seconds(
          [lambda: jax.block_until_ready(palix.generate(palix.params, tokens)), hf_generate],
          args.repeats),
      "decode only": _interleaved_median_seconds(
          [lambda: jax.block_until_ready(palix.decode_only(palix.params, encoded, mask)),
           hf_decode_only], args.repeats),
  }
  n_tokens = batch * output_len
  shape = ("tiny" if args.tiny else "t5-small-like") + (
      f" (vocab {sizes['vocab_size']}, d_model {sizes['d_model']}, d_ff {sizes['d_ff']}, "
      f"{sizes['num_heads']}x{sizes['d_kv']} heads, {sizes['num_layers']}+"
      f"{sizes['num_decoder_layers']} layers)")
  print(f"T5 greedy decoding, {shape}; batch {batch}, input {input_len}, output {output_len} "
        f"(forced); median of {args.repeats}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); CPUs allowed: {len(os.sched_getaffinity(0))}")
  print(f"palix first call (compile + run): {compile_s:.2f} s")
  print(f"token agreement palix vs HF: {np.mean(ours == theirs[:, :output_len]):.3f} "
        "(HF forbids EOS before the forced length, palix does not)")
  for name, (ours_s, theirs_s) in results.items():
    print(f"{name:12s} palix {n_tokens / ours_s:9.1f} tok/s ({ours_s * 1e3:8.1f} ms)   "
          f"HF {n_tokens / theirs_s:9.1f} tok/s ({theirs_s * 1e3:8.1f} ms)   "
          f"ratio {theirs_s / ours_s:5.2f}x")
  return 0


if __name__ == "__main__":
  raise SystemExit(run())
