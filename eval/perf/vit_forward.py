"""ViT-B/16 forward throughput: palix (JAX, jit) against HF ``ViTModel`` (torch), same weights.

    python -m palix.eval.perf.vit_forward [--batch 8] [--iters 5] [--dtype float32|bfloat16]
                                          [--tiny]

Both sides run the same randomly initialised ViT-B/16 at 224 px (HF's weights imported into palix
with ``palix.interop.hf_vit``, and the outputs compared, so both compute the same function):
palix under ``jax.jit`` (compile and one warm-up call excluded), HF in eval mode under
``torch.no_grad`` with ``torch.set_num_threads(os.cpu_count())`` (one warm-up call excluded).
Prints images/s for each, the ratio palix/HF (> 1 means palix is faster), the device and the
versions. ``--tiny`` swaps in a 2-layer width-64 model on 32 px images (a smoke run). One run on
a shared machine is noisy; repeat it before trusting small differences.
"""

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from palix.interop import hf_vit
from palix.models.vit import ViT

VIT_B16 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, image_size=224, patch_size=16)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=32, patch_size=8)


def _throughput(run, batch, iters):
  run()  # warm-up (and, for palix, the call after compilation)
  start = time.perf_counter()
  for _ in range(iters):
    run()
  return batch * iters / (time.perf_counter() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--tiny", action="store_true", help="2-layer width-64 model, 32px")
  args = parser.parse_args(argv)

  import torch  # benchmark-only dependencies (the test extra), imported when it runs
  import transformers

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  sizes = TINY if args.tiny else VIT_B16
  hf_model = transformers.ViTModel(transformers.ViTConfig(**sizes), add_pooling_layer=False)
  hf_model = hf_model.eval()
  state_dict = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  config = hf_vit.vit_config_from_hf(hf_model.config, dtype=args.dtype, param_dtype=args.dtype)
  params = jax.device_put(hf_vit.params_from_hf_state_dict(state_dict, config))

  size = sizes["image_size"]
  images = np.random.RandomState(0).uniform(-1, 1, (args.batch, size, size, 3)).astype(np.float32)
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  hf_model = hf_model.to(torch_dtype)
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2)).to(torch_dtype)

  forward = jax.jit(lambda p, x: ViT(config).apply({"params": p}, x)[1]["encoded"])
  images_dev = jax.device_put(jnp.asarray(images))
  start = time.perf_counter()
  ours = np.asarray(forward(params, images_dev).astype(jnp.float32))
  compile_s = time.perf_counter() - start

  def run_hf():
    with torch.no_grad():
      return hf_model(pixel_values=pixels).last_hidden_state

  theirs = run_hf().float().numpy()
  max_diff = float(np.abs(ours - theirs).max())

  palix_ips = _throughput(lambda: forward(params, images_dev).block_until_ready(), args.batch,
                          args.iters)
  hf_ips = _throughput(run_hf, args.batch, args.iters)

  name = "tiny ViT (2x64, 32px/8)" if args.tiny else "ViT-B/16 224px"
  device = jax.devices()[0]
  print(f"model: {name}, batch {args.batch}, {args.iters} timed iterations, dtype {args.dtype}")
  print(f"device: jax {device.platform} ({device.device_kind}), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; torch threads {torch.get_num_threads()}")
  print(f"versions: jax {jax.__version__}, jaxlib {jax.lib.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}")
  print(f"outputs agree: max |palix - HF| = {max_diff:.2e}; palix compile+first call "
        f"{compile_s:.1f} s")
  print(f"palix images/s: {palix_ips:.2f}")
  print(f"hf images/s: {hf_ips:.2f}")
  print(f"ratio palix/hf: {palix_ips / hf_ips:.3f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
