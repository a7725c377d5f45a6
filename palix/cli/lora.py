"""``palix lora {save-adapters,merge}``: LoRA adapters alone, and folded into a base checkpoint.

* ``save-adapters --checkpoint=MODEL_DIR --output=DIR [--gin_file=MODEL_DIR/config.gin]``: the
  adapters of a LoRA run (``gin/runs/finetune_lora.gin``) as their own small checkpoint plus
  ``lora.json``; rank, alpha and targets come from the run's gin config (the trainer writes it to
  ``MODEL_DIR/config.gin``). The base weights are not read.
* ``merge --base=CHECKPOINT --adapters=DIR --output=DIR``: ``W + (alpha / r) A B`` for every
  adapted kernel of the base model's checkpoint, written as a params-only checkpoint that the base
  model's gin files load as they load the base (``palix infer`` / ``palix eval``
  ``--gin.CHECKPOINT_PATH``).

Both print the parameter counts; the last line is ``total_params: N`` of what was written.
"""

import argparse
import pathlib

import gin

from palix import config as palix_config
from palix import lora
from palix import model_stats
from palix.training import lora as lora_training


def _lora_config(gin_file: pathlib.Path) -> lora.LoraConfig:
  if not gin_file.is_file():
    raise FileNotFoundError(f"{gin_file} not found: give the LoRA run's gin config with "
                            "--gin_file (palix train writes MODEL_DIR/config.gin)")
  gin.clear_config()
  try:
    palix_config.parse_gin([str(gin_file)], finalize=False)
    return lora.LoraConfig()  # the run's bindings of LoraConfig
  finally:
    gin.clear_config()


def save_adapters(args) -> int:
  checkpoint = pathlib.Path(args.checkpoint)
  gin_file = pathlib.Path(args.gin_file) if args.gin_file else checkpoint / "config.gin"
  config = _lora_config(gin_file)
  adapters = lora_training.adapters_of_checkpoint(checkpoint)
  out = lora_training.save_adapters(args.output, adapters, config, overwrite=args.overwrite)
  kernels = lora.adapted_paths(adapters)
  print(f"saved the adapters of {len(kernels)} kernels (rank {config.rank}, alpha {config.alpha}) "
        f"from {checkpoint} -> {out}")
  print(f"total_params: {model_stats.count_params(adapters)}")
  return 0


def merge(args) -> int:
  merged, config = lora_training.merge_checkpoint(args.base, args.adapters, args.output,
                                                  overwrite=args.overwrite)
  print(f"merged {args.adapters} (rank {config.rank}, alpha {config.alpha}) into {args.base} -> "
        f"{pathlib.Path(args.output).absolute()}")
  print(f"total_params: {model_stats.count_params(merged)}")
  return 0


def run(argv) -> int:
  parser = argparse.ArgumentParser(prog="palix lora", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  save = sub.add_parser("save-adapters", help="the adapters of a LoRA run, alone")
  save.add_argument("--checkpoint", required=True,
                    help="the LoRA run (MODEL_DIR, its checkpoints folder or one step)")
  save.add_argument("--gin_file", default=None,
                    help="the run's gin config (default: CHECKPOINT/config.gin)")
  save.add_argument("--output", required=True, help="folder to write")
  save.add_argument("--overwrite", action="store_true")
  fold = sub.add_parser("merge", help="fold adapters into a base checkpoint, for inference")
  fold.add_argument("--base", required=True, help="the base model's checkpoint")
  fold.add_argument("--adapters", required=True, help="a folder written by save-adapters")
  fold.add_argument("--output", required=True, help="folder to write")
  fold.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  return save_adapters(args) if args.command == "save-adapters" else merge(args)
