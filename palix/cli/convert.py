"""``palix convert --from_hf=FOLDER --output=DIR``: an HF checkpoint folder -> Orbax params + gin.

The folder's ``config.json`` ``model_type`` picks the importer: ``t5``/``mt5``
(``T5ForConditionalGeneration``, ``palix.interop.hf_t5``) or ``vit`` (``ViTModel``,
``palix.interop.hf_vit``). Weights must be safetensors (pickled ``*.bin`` files are refused).
``DIR`` receives an Orbax ``StandardCheckpointer`` checkpoint of ``{'params': params}`` and
``DIR/config.gin``, which defines ``MODEL`` for the same configuration (so ``palix params
--gin_file=DIR/config.gin`` works). The last line printed is ``total_params: N``.
"""

import argparse
import dataclasses
import pathlib
import shutil
import sys

from palix import model_stats

T5_MODEL_TYPES = ("t5", "mt5")
VIT_MODEL_TYPES = ("vit",)


def t5_gin(config, source: str) -> str:
  return (f"# Converted by `palix convert` from {source} (T5ForConditionalGeneration).\n"
          "import palix.models.t5\n\n" + config.to_gin() +
          "T5Spec.config = @T5Config()\nMODEL = @T5Spec()\n")


def vit_gin(config, source: str) -> str:
  """gin bindings for a resolved ``ViTConfig``; layer classes and the MLP activation go through
  the ``vit.*`` constants."""
  lines = [f"# Converted by `palix convert` from {source} (ViTModel).", "import palix.models.vit",
           ""]
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    text = f"%vit.{value.__name__}" if callable(value) else repr(value)
    lines.append(f"ViTConfig.{field.name} = {text}")
  lines += ["VisionEncoder.config = @ViTConfig()", "MODEL = @VisionEncoder()"]
  return "\n".join(lines) + "\n"


def load(folder: pathlib.Path, overrides: dict):
  """``(model_type, config, params, gin text)`` for an HF folder."""
  from palix.interop import hf_t5  # pylint: disable=g-import-not-at-top
  cfg = hf_t5.read_hf_config(folder)
  model_type = cfg.get("model_type")
  if model_type in T5_MODEL_TYPES:
    config, params = hf_t5.load_hf_t5(folder, **overrides)
    return model_type, config, params, t5_gin(config, str(folder))
  if model_type in VIT_MODEL_TYPES:
    from palix.interop import hf_vit  # pylint: disable=g-import-not-at-top
    config, params = hf_vit.load_hf_vit(folder, **overrides)
    return model_type, config, params, vit_gin(config, str(folder))
  raise ValueError(f"{folder / 'config.json'}: model_type {model_type!r} is not supported; "
                   f"palix convert reads {', '.join(T5_MODEL_TYPES + VIT_MODEL_TYPES)}")


def save(output: pathlib.Path, params, gin_text: str, overwrite: bool) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if output.exists():
    if not overwrite:
      raise FileExistsError(f"output {output} already exists; pass --overwrite to replace it")
    if any(output.iterdir()) and not (output / "config.gin").exists():
      raise FileExistsError(f"output {output} is not empty and was not written by palix convert "
                            "(no config.gin); not deleting it")
    shutil.rmtree(output)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(output, {"params": params})
  checkpointer.wait_until_finished()
  checkpointer.close()
  (output / "config.gin").write_text(gin_text)


def run(argv) -> int:
  parser = argparse.ArgumentParser(prog="palix convert", description=__doc__.splitlines()[0])
  parser.add_argument("--from_hf", required=True,
                      help="HF model folder (config.json + safetensors)")
  parser.add_argument("--output", required=True, help="checkpoint folder to write")
  parser.add_argument("--scan", action="store_true",
                      help="store the layers stacked for a scan=True model")
  parser.add_argument("--param_dtype", default=None,
                      help="parameter dtype of the checkpoint (default: float32)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  args = parser.parse_args(argv)
  overrides = {}
  if args.scan:
    overrides["scan"] = True
  if args.param_dtype:
    overrides["param_dtype"] = args.param_dtype
  folder = pathlib.Path(args.from_hf).expanduser().resolve()
  output = pathlib.Path(args.output).expanduser().resolve()
  try:
    model_type, _, params, gin_text = load(folder, overrides)
    save(output, params, gin_text, args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"palix convert: error: {e}", file=sys.stderr)
    return 1
  by_module = model_stats.params_by_top_level_module(params)
  total = model_stats.count_params(params)
  print(f"converted {folder} (model_type {model_type}) -> {output}")
  print(f"config: {output / 'config.gin'}")
  for name, count in by_module.items():
    print(f"  {name}: {count:,}")
  print(f"total_params: {total}")
  return 0
