"""LoRA fine-tuning with the palix trainer: a model wrapper, and adapters saved, loaded and merged.

``LoraModel`` wraps any ``palix.models.base.BaseModel``. Its parameters are ``{'base': the base
model's parameters, 'lora': the adapters}`` (``palix.lora``); it freezes ``base`` through the
model contract's ``frozen_param_prefixes`` (no update, no optimizer state: the optimizer's
``frozen`` group) and every call of the contract runs the base model on the merged tree. gin::

  trainer.train.model = @lora.LoraModel()
  lora.LoraModel.base = %MODEL
  lora.LoraConfig.targets = ['text/.*/(query|value)/kernel']
  lora.LoraConfig.rank = 4

``gin/runs/finetune_lora.gin`` does this and loads the base weights into ``base/``
(``InitialCheckpoint`` with ``rename``).

Adapters alone (``save_adapters``) are a params-only Orbax checkpoint of ``{'params': {'lora':
adapters}}`` plus ``lora.json`` (rank, alpha, targets): a few percent of the model, read back by
``load_adapters`` and folded into a base checkpoint by ``merge_checkpoint`` (what ``palix lora
merge`` runs), which writes an ordinary checkpoint of the base model for ``palix infer`` /
``palix eval``.
"""

import json
import pathlib
from typing import Any, Dict, Optional, Tuple, Union

import gin
import jax
import numpy as np
from flax import traverse_util

from palix import lora
from palix.models import base as model_base
from palix.training import checkpoints

BASE, ADAPTERS = "base", "lora"
ADAPTERS_FILE = "lora.json"


@gin.configurable
class LoraModel(model_base.BaseModel):
  """A base model plus low-rank adapters (see the module docstring).

  Args:
    base: the model to adapt (its contract is delegated).
    config: which kernels, the rank and alpha.
  """

  def __init__(self, base: model_base.BaseModel = gin.REQUIRED,
               config: lora.LoraConfig = lora.LoraConfig()):
    self.base = base
    self.config = config
    self.module = base.module

  # --- parameters ----------------------------------------------------------------------------
  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    base_rng, adapter_rng = jax.random.split(rng)
    variables = self.base.get_initial_variables(base_rng, input_shapes, input_types)
    return {"params": {BASE: variables["params"],
                       ADAPTERS: lora.init_adapters(adapter_rng, variables["params"],
                                                    self.config)}}

  def frozen_param_prefixes(self) -> Tuple[str, ...]:
    return (BASE,)

  def merged(self, params):
    """The base model's parameters with the adapters folded in."""
    return lora.merge(params[BASE], params[ADAPTERS], self.config.scale)

  # --- the contract, on the merged tree ----------------------------------------------------------
  def loss_fn(self, params, batch, rng):
    return self.base.loss_fn(self.merged(params), batch, rng)

  def eval_fn(self, params, batch):
    return self.base.eval_fn(self.merged(params), batch)

  def predict_batch_with_aux(self, params, batch, rng=None, **decode_kwargs):
    return self.base.predict_batch_with_aux(self.merged(params), batch, rng, **decode_kwargs)

  def score_batch(self, params, batch):
    return self.base.score_batch(self.merged(params), batch)

  def example_inputs(self, batch_size: int = 1):
    return self.base.example_inputs(batch_size)

  def input_shapes(self, batch_size: int = 1):
    return self.base.input_shapes(batch_size)

  def check_feature_lengths(self, task_feature_lengths):
    self.base.check_feature_lengths(task_feature_lengths)


# --- adapters on disk --------------------------------------------------------------------------

def _abstract(stored: Dict[str, Tuple[Tuple[int, ...], Any]], prefix: str):
  """ShapeDtypeStructs (one device) of the stored parameters under ``prefix``."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  flat = {path: jax.ShapeDtypeStruct(shape, dtype, sharding=device)
          for path, (shape, dtype) in stored.items() if path.startswith(prefix)}
  return traverse_util.unflatten_dict(flat, sep="/")


def _read(path, prefix: str = "") -> dict:
  """Parameters under ``prefix`` of any checkpoint ``checkpoints.load_params`` accepts (each
  array read alone: a LoRA run's base weights stay on disk when only its adapters are read)."""
  stored = checkpoints.stored_params(checkpoints.resolve_pytree_dir(str(path)))
  abstract = _abstract(stored, prefix)
  if not abstract:
    raise ValueError(f"checkpoint {str(path)!r} has no parameters under {prefix!r} (it has "
                     f"{sorted({p.split('/')[0] for p in stored})})")
  loaded = checkpoints.load_params(str(path), abstract)
  return jax.device_get(traverse_util.unflatten_dict(loaded, sep="/"))


def adapters_of_checkpoint(path) -> dict:
  """The adapters of a LoRA training run's checkpoint (``MODEL_DIR``, its checkpoints folder or
  one step)."""
  return _read(path, ADAPTERS + "/")[ADAPTERS]


def save_adapters(directory: Union[str, pathlib.Path], adapters, config: lora.LoraConfig,
                  overwrite: bool = False) -> pathlib.Path:
  """Writes ``{'params': {'lora': adapters}}`` (Orbax) and ``lora.json``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and not overwrite:
    raise FileExistsError(f"{directory} already exists; pass overwrite (--overwrite) to replace it")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, {"params": {ADAPTERS: jax.device_get(adapters)}}, force=overwrite)
  (directory / ADAPTERS_FILE).write_text(json.dumps(
      {"rank": config.rank, "alpha": config.alpha, "targets": list(config.targets),
       "kernels": list(lora.adapted_paths(adapters))}, indent=2) + "\n")
  return directory


def load_adapters(directory: Union[str, pathlib.Path]) -> Tuple[dict, lora.LoraConfig]:
  """``(adapters, LoraConfig)`` of a folder written by ``save_adapters``."""
  directory = pathlib.Path(directory)
  description = directory / ADAPTERS_FILE
  if not description.is_file():
    raise FileNotFoundError(f"{description} not found: not a folder of LoRA adapters (palix lora "
                            "save-adapters writes one)")
  try:
    info = json.loads(description.read_text())
    config = lora.LoraConfig(targets=tuple(info["targets"]), rank=int(info["rank"]),
                             alpha=float(info["alpha"]))
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{description}: not a LoRA description with rank, alpha and targets "
                     f"({e})") from None
  adapters = _read(directory, ADAPTERS + "/")[ADAPTERS]
  rank = {np.shape(a)[-1] for p, a in traverse_util.flatten_dict(adapters, sep="/").items()
          if p.endswith(lora.ADAPTER_A)}
  if rank != {config.rank}:
    raise ValueError(f"{directory}: the adapters have rank {sorted(rank)}, {description.name} "
                     f"says {config.rank}")
  return adapters, config


def merge_checkpoint(base_path, adapters_dir, output: Union[str, pathlib.Path],
                     overwrite: bool = False) -> Tuple[dict, lora.LoraConfig]:
  """Folds the adapters of ``adapters_dir`` into the parameters of ``base_path`` (any checkpoint
  of the base model) and writes them as a params-only checkpoint ``{'params': merged}`` to
  ``output``; returns ``(merged params, LoraConfig)``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  adapters, config = load_adapters(adapters_dir)
  params = _read(base_path)
  merged = jax.device_get(lora.merge(params, adapters, config.scale))
  output = pathlib.Path(output).absolute()
  if output.exists() and not overwrite:
    raise FileExistsError(f"{output} already exists; pass overwrite (--overwrite) to replace it")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(output, {"params": merged}, force=overwrite)
  return merged, config

