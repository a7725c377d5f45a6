"""``palix convert``: foreign checkpoints -> Orbax params + gin, and palix weights -> Hugging Face.

Import (``--from``): ``hf`` (a Hugging Face folder: ``config.json`` ``model_type`` ``t5``/``mt5``,
``palix.interop.hf_t5``, or ``vit``, ``palix.interop.hf_vit``; safetensors only, pickled ``*.bin``
files are refused), ``t5x`` (a T5X checkpoint, legacy msgpack + TensorStore or Orbax,
``palix.interop.t5x``) or ``big_vision`` (a ViT ``.npz``, ``palix.interop.big_vision``).
``--output`` receives an Orbax ``StandardCheckpointer`` checkpoint of ``{'params': params}`` and
``config.gin``, which defines ``MODEL`` for the same configuration (so ``palix params
--gin_file=DIR/config.gin`` works). The last line printed is ``total_params: N``.
``--from_hf=FOLDER`` is ``--from=hf --input=FOLDER``.

Export (``--to=hf``): ``--input`` is a folder with ``config.gin`` (what ``palix convert`` or
``palix train`` writes) and its checkpoint; the T5 or ViT (``--tower`` for a PaLI-X) is written
to ``--output`` as ``config.json`` + ``model.safetensors`` (``palix.interop.hf_export``).
"""

import argparse
import dataclasses
import pathlib
import shutil
import sys

from palix import model_stats

T5_MODEL_TYPES = ("t5", "mt5")
VIT_MODEL_TYPES = ("vit",)
SOURCES = ("hf", "t5x", "big_vision")


def t5_gin(config, source: str) -> str:
  return (f"# Converted by `palix convert` from {source}.\n"
          "import palix.models.t5\n\n" + config.to_gin() +
          "T5Spec.config = @T5Config()\nMODEL = @T5Spec()\n")


def _vit_bindings(config):
  """gin bindings for a resolved ``ViTConfig``; layer classes and the MLP activation go through
  the ``vit.*`` constants."""
  lines = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    text = f"%vit.{value.__name__}" if callable(value) else repr(value)
    lines.append(f"ViTConfig.{field.name} = {text}")
  return lines


def vit_gin(config, source: str) -> str:
  lines = [f"# Converted by `palix convert` from {source}.", "import palix.models.vit", ""]
  lines += _vit_bindings(config)
  lines += ["VisionEncoder.config = @ViTConfig()", "MODEL = @VisionEncoder()"]
  return "\n".join(lines) + "\n"


def classifier_gin(config, num_classes: int, source: str) -> str:
  """A ViT with a linear head: ``palix.models.classifier.ClassifierModel``."""
  lines = [f"# Converted by `palix convert` from {source}.", "import palix.models.classifier",
           "import palix.models.vit", ""]
  lines += _vit_bindings(config)
  lines += ["ClassifierConfig.vit = @ViTConfig()", f"ClassifierConfig.num_classes = {num_classes}",
            "ClassifierModel.config = @ClassifierConfig()",
            f"ClassifierModel.image_size = {config.image_size}", "MODEL = @ClassifierModel()"]
  return "\n".join(lines) + "\n"


def load(folder: pathlib.Path, overrides: dict):
  """``(model_type, config, params, gin text)`` for an HF folder."""
  from palix.interop import hf_t5  # pylint: disable=g-import-not-at-top
  cfg = hf_t5.read_hf_config(folder)
  model_type = cfg.get("model_type")
  if model_type in T5_MODEL_TYPES:
    config, params = hf_t5.load_hf_t5(folder, **overrides)
    return model_type, config, params, t5_gin(config, f"{folder} (T5ForConditionalGeneration)")
  if model_type in VIT_MODEL_TYPES:
    from palix.interop import hf_vit  # pylint: disable=g-import-not-at-top
    config, params = hf_vit.load_hf_vit(folder, **overrides)
    return model_type, config, params, vit_gin(config, f"{folder} (ViTModel)")
  raise ValueError(f"{folder / 'config.json'}: model_type {model_type!r} is not supported; "
                   f"palix convert reads {', '.join(T5_MODEL_TYPES + VIT_MODEL_TYPES)}")


def load_t5x(path: pathlib.Path, args, overrides: dict):
  from palix.interop import t5x  # pylint: disable=g-import-not-at-top
  config, params = t5x.load_t5x(
      path, step=args.step, activation=args.activation, scan_axis=args.scan_axis,
      relative_attention_max_distance=args.relative_attention_max_distance, **overrides)
  return "t5x", config, params, t5_gin(config, f"{path} (T5X)")


def load_big_vision(path: pathlib.Path, args, overrides: dict):
  from palix.interop import big_vision  # pylint: disable=g-import-not-at-top
  imported = big_vision.load_big_vision(path, prefix=args.prefix, pool=args.pool,
                                        image_size=args.image_size, drop_head=args.drop_head,
                                        **overrides)
  source = f"{path} (big_vision)"
  if imported.head is None:
    return "big_vision", imported.config, imported.params, vit_gin(imported.config, source)
  params = {"vit": imported.params, "head": imported.head}
  return ("big_vision", imported.config, params,
          classifier_gin(imported.config, imported.num_classes, source))


def save(output: pathlib.Path, params, gin_text: str, overwrite: bool) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  _prepare_output(output, overwrite, marker="config.gin")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(output, {"params": params})
  checkpointer.wait_until_finished()
  checkpointer.close()
  (output / "config.gin").write_text(gin_text)


def _prepare_output(output: pathlib.Path, overwrite: bool, marker: str) -> None:
  if output.exists():
    if not overwrite:
      raise FileExistsError(f"output {output} already exists; pass --overwrite to replace it")
    if any(output.iterdir()) and not (output / marker).exists():
      raise FileExistsError(f"output {output} is not empty and was not written by palix convert "
                            f"(no {marker}); not deleting it")
    shutil.rmtree(output)


def export_hf(source: pathlib.Path, output: pathlib.Path, tower, overwrite: bool):
  """Exports the T5 or ViT of the checkpoint in ``source`` (with its ``config.gin``); returns
  ``(kind, params)``."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from palix import config as palix_config  # pylint: disable=g-import-not-at-top
  from palix.interop import hf_export  # pylint: disable=g-import-not-at-top
  from palix.training import checkpoints  # pylint: disable=g-import-not-at-top
  gin_file = source / "config.gin"
  if not gin_file.is_file():
    raise FileNotFoundError(f"{gin_file} not found: --to=hf reads a folder written by palix "
                            "convert or palix train (its config.gin defines MODEL)")
  model = palix_config.model_from_gin([str(gin_file)])
  towers = hf_export.towers(model.config)
  if tower is None:
    if len(towers) > 1:
      raise ValueError(f"{gin_file}: the model has {' and '.join(towers)} towers; choose one with "
                       "--tower")
    tower = next(iter(towers))
  if tower not in towers:
    raise ValueError(f"{gin_file}: the model has no {tower} tower (it has {', '.join(towers)})")
  config, key = towers[tower]
  shapes = model_stats.param_shapes(model.module, model.example_inputs(1))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          shapes)
  prefix = f"{key}/" if key else ""
  loaded = checkpoints.load_params(str(source), abstract, include=(f"{prefix}.*",))
  params = jax.device_get(traverse_util.unflatten_dict(
      {name[len(prefix):]: value for name, value in loaded.items()}, sep="/"))
  _prepare_output(output, overwrite, marker="config.json")
  export = hf_export.export_t5 if tower == "t5" else hf_export.export_vit
  export(output, params, config)
  return tower, params


def run(argv) -> int:
  parser = argparse.ArgumentParser(prog="palix convert", description=__doc__.splitlines()[0])
  parser.add_argument("--from", dest="source", choices=SOURCES,
                      help="import: the --input's format")
  parser.add_argument("--to", choices=("hf",), help="export: write --input's weights as a "
                      "Hugging Face folder")
  parser.add_argument("--input", help="what to convert (a folder or file; see --from / --to)")
  parser.add_argument("--from_hf", help="HF model folder (config.json + safetensors): the same "
                      "as --from=hf --input=FOLDER")
  parser.add_argument("--output", required=True, help="folder to write")
  parser.add_argument("--scan", action="store_true",
                      help="store the layers stacked for a scan=True model")
  parser.add_argument("--param_dtype", default=None,
                      help="parameter dtype of the checkpoint (default: float32)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  t5x_args = parser.add_argument_group("--from=t5x")
  t5x_args.add_argument("--step", type=int, default=None,
                        help="checkpoint_<step> of a model folder (default: the newest)")
  t5x_args.add_argument("--activation", default="gelu", choices=("gelu", "silu"),
                        help="the gated MLP's activation: gelu (T5.1.1) or silu (UL2)")
  t5x_args.add_argument("--relative_attention_max_distance", type=int, default=128)
  t5x_args.add_argument("--scan_axis", type=int, default=1,
                        help="layer axis of a scanned checkpoint (T5X's param_scan_axis)")
  bv_args = parser.add_argument_group("--from=big_vision")
  bv_args.add_argument("--prefix", default=None,
                       help="the tower's name prefix, e.g. img/ (default: img/ if present)")
  bv_args.add_argument("--pool", default=None, choices=("gap", "map", "none"),
                       help="pooling (default: map with a MAP head, none with a class token, "
                       "else gap)")
  bv_args.add_argument("--image_size", type=int, default=None,
                       help="resolution; the position table is resized to it")
  bv_args.add_argument("--drop_head", action="store_true", help="leave the head out")
  parser.add_argument("--tower", default=None, choices=("t5", "vit"),
                      help="--to=hf: which tower of a PaLI-X checkpoint to export")
  args = parser.parse_args(argv)
  if args.from_hf:
    if args.source not in (None, "hf") or args.input:
      parser.error("--from_hf=FOLDER is --from=hf --input=FOLDER; give one of the two forms")
    args.source, args.input = "hf", args.from_hf
  if (args.source is None) == (args.to is None):
    parser.error("give --from=hf|t5x|big_vision (import) or --to=hf (export)")
  if not args.input:
    parser.error("--input is required")
  overrides = {}
  if args.scan:
    overrides["scan"] = True
  if args.param_dtype:
    overrides["param_dtype"] = args.param_dtype
  source = pathlib.Path(args.input).expanduser().resolve()
  output = pathlib.Path(args.output).expanduser().resolve()
  try:
    if args.to:
      if args.scan or args.param_dtype:
        raise ValueError("--scan and --param_dtype are import options; --to=hf writes the "
                         "checkpoint's own layout and dtypes")
      kind, params = export_hf(source, output, args.tower, args.overwrite)
      print(f"exported the {kind} of {source} -> {output} (config.json, model.safetensors)")
      print(f"total_params: {model_stats.count_params(params)}")
      return 0
    if args.source == "hf":
      model_type, _, params, gin_text = load(source, overrides)
    elif args.source == "t5x":
      model_type, _, params, gin_text = load_t5x(source, args, overrides)
    else:
      model_type, _, params, gin_text = load_big_vision(source, args, overrides)
    save(output, params, gin_text, args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"palix convert: error: {e}", file=sys.stderr)
    return 1
  by_module = model_stats.params_by_top_level_module(params)
  total = model_stats.count_params(params)
  print(f"converted {source} (model_type {model_type}) -> {output}")
  print(f"config: {output / 'config.gin'}")
  for name, count in by_module.items():
    print(f"  {name}: {count:,}")
  print(f"total_params: {total}")
  return 0
