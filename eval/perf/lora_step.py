"""LoRA against full fine-tuning: one AdamW training step of the same PaLI-X, time and memory.

    python -m palix.eval.perf.lora_step [--model demo|small] [--batch 32] [--iters 10]
                                        [--rounds 3]

``demo``: the demo PaLI-X (``models/palix/palix_demo.gin``, vocabulary 2048, one 32 px image,
prompts of 16 and targets of 8 tokens), as in ``eval/experiments/lora_easy_vqa.py``. ``small``:
a ViT-S/16 on 224 px images with T5.1.1 small (77M + 22M parameters; minutes to compile on a
CPU). The LoRA arm adapts every attention and MLP kernel of the text model with rank 4
(``experiments/lora_easy_vqa_adapters.gin``); both arms use AdamW with gradient clipping, as
the trainer builds them (``Optimizer``, ``StateFactory``, ``make_train_step``).

Memory, from XLA's buffer assignment of the compiled step (``memory_analysis``, independent of
the machine's load): the train state (parameters and optimizer state, what stays resident) and
the step's peak (its arguments, outputs and temporaries, minus the donated state it reuses).
Time: the two steps alternate for ``--rounds`` rounds of ``--iters`` steps on one batch
(compile and one warm-up step excluded); the median per round is compared, and the ratio printed
is LoRA / full (< 1: LoRA is faster). Both wall time and the process's CPU time are measured: on
a shared machine the wall time depends on what else runs, the CPU time (the work of all of XLA's
threads) much less.
"""

import argparse
import statistics
import time

import gin
import jax
import numpy as np

from palix import config as palix_config
from palix import lora
from palix import model_stats
from palix import partitioning
from palix.training import lora as lora_training
from palix.training import optimizers
from palix.training import schedules
from palix.training import synthetic_data
from palix.training import train_step
from palix.training.train_state import StateFactory

MODELS = {
    "demo": (["models/palix/palix_demo.gin"], ["T5Config.vocab_size = 2048"], 32),
    "small": (["models/vit/vit_s.gin", "models/t5/t5_1_1_small.gin"],
              ["import palix.models.palix_model", "VIT_PATCH_SIZE = 16",
               "PaliXConfig.vit = @ViTConfig()", "PaliXConfig.t5 = @T5Config()",
               "PaliXModel.config = @PaliXConfig()", "PaliXModel.image_size = 224",
               "MODEL = @PaliXModel()"], 224),
}
TARGETS = ("text/.*/(query|key|value|out|wi_0|wi_1|wo)/kernel",)
LENGTHS = {"inputs": 16, "targets": 8}


def build_model(name: str):
  files, bindings, image_size = MODELS[name]
  gin.clear_config()
  try:
    palix_config.parse_gin(files, bindings, finalize=False)
    return gin.query_parameter("%MODEL").scoped_configurable_fn(), image_size
  finally:
    gin.clear_config()


def _bytes(tree) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * np.prod(x.shape) for x in jax.tree.leaves(tree)))


def prepare(model, batch, learning_rate: float):
  """The compiled step, its initial state and its memory figures."""
  optimizer = optimizers.Optimizer(learning_rate_fn=schedules.constant(learning_rate),
                                   base=optimizers.adamw, clip_grad_norm=1.0)
  optimizer = optimizer.with_frozen_prefixes(model.frozen_param_prefixes())
  factory = StateFactory(model, optimizer.make(), partitioning.Partitioner(),
                         {k: v.shape for k, v in batch.items()},
                         {k: v.dtype for k, v in batch.items()})
  state = factory.initialize()
  step = jax.jit(train_step.make_train_step(model, factory.tx, optimizer.learning_rate_fn,
                                            optimizer.frozen_mask(factory.abstract_params)),
                 donate_argnums=(0,))
  compiled = step.lower(state, batch).compile()
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  params = state.params
  trained = model_stats.count_params(params.get(lora_training.ADAPTERS, params))
  figures = {"trained_params": trained, "total_params": model_stats.count_params(params),
             "state_mb": (_bytes(state.params) + _bytes(state.opt_state)) / 2**20,
             "opt_state_mb": _bytes(state.opt_state) / 2**20,
             "peak_mb": peak / 2**20, "temp_mb": memory.temp_size_in_bytes / 2**20}
  return compiled, state, figures


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="demo", choices=list(MODELS))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  base, image_size = build_model(args.model)
  batch = next(synthetic_data.synthetic_batches(split="train", batch_size=args.batch,
                                                image_size=image_size, feature_lengths=LENGTHS))
  arms = {"full": (base, 1e-3),
          "lora": (lora_training.LoraModel(base, lora.LoraConfig(targets=TARGETS, rank=4,
                                                                 alpha=8.0)), 3e-3)}
  prepared = {name: prepare(model, batch, lr) for name, (model, lr) in arms.items()}
  states = {name: p[1] for name, p in prepared.items()}
  for name, (compiled, _, _) in prepared.items():  # warm-up
    states[name], metrics = compiled(states[name], batch)
    jax.block_until_ready(metrics)
  times = {name: [] for name in arms}
  cpu_times = {name: [] for name in arms}
  for _ in range(args.rounds):
    for name, (compiled, _, _) in prepared.items():
      start, cpu_start = time.perf_counter(), time.process_time()
      for _ in range(args.iters):
        states[name], metrics = compiled(states[name], batch)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - start) / args.iters)
      cpu_times[name].append((time.process_time() - cpu_start) / args.iters)
  print(f"model {args.model}, batch {args.batch}, {jax.devices()[0].platform}: "
        f"{args.rounds} rounds of {args.iters} steps")
  print("| arm | trained params | share | train state MB | optimizer state MB | step peak MB "
        "| ms / step | CPU ms / step |")
  print("|---|---|---|---|---|---|---|---|")
  for name, (_, _, f) in prepared.items():
    share = 100 * f["trained_params"] / f["total_params"]
    print(f"| {name} | {f['trained_params']:,} | {share:.1f}% | {f['state_mb']:.1f} | "
          f"{f['opt_state_mb']:.1f} | {f['peak_mb']:.1f} | "
          f"{1000 * statistics.median(times[name]):.1f} | "
          f"{1000 * statistics.median(cpu_times[name]):.1f} |")
  full, low = prepared["full"][2], prepared["lora"][2]
  time_ratio = statistics.median(times["lora"]) / statistics.median(times["full"])
  cpu_ratio = statistics.median(cpu_times["lora"]) / statistics.median(cpu_times["full"])
  print(f"lora/full: step time {time_ratio:.2f} (CPU time {cpu_ratio:.2f}), "
        f"train state {low['state_mb'] / full['state_mb']:.2f}, "
        f"step peak {low['peak_mb'] / full['peak_mb']:.2f}")


if __name__ == "__main__":
  main()
