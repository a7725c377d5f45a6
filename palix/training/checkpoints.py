"""Checkpoints with Orbax: periodic train-state saves, resume, and (partial) parameter restores.

Layout of a training run::

  MODEL_DIR/checkpoints/<step>/state/     # TrainState as a pytree: step, params, opt_state, rng
  MODEL_DIR/checkpoints/<step>/metadata/  # JSON: step, data position, batch geometry

Saves are asynchronous and collective (every process calls them; Orbax writes each process's
shards). A step folder only appears once complete, so a run killed mid-save resumes from the last
complete one (and says that it found and ignored the incomplete save).

``load_params`` reads parameters (all, or a regex-selected subset with renames) from either a
training checkpoint (``MODEL_DIR/checkpoints``, or one ``<step>`` folder in it) or a params-only
checkpoint written as ``ocp.StandardCheckpointer().save(dir, {'params': params})`` (``palix
convert``). Each process reads only its own shards of the target layout.
"""

import dataclasses
import difflib
import logging
import pathlib
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import orbax.checkpoint as ocp
from etils import epath

from palix.training import param_paths
from palix.training import train_state as train_state_lib
from palix.training.train_state import TrainState

logger = logging.getLogger(__name__)


class Checkpoints:
  """Train-state checkpoints under ``directory`` (``MODEL_DIR/checkpoints``).

  Args:
    directory: where step folders go.
    keep: keep the newest ``keep`` checkpoints (None: all).
    async_save: write in a background thread while training continues.
  """

  def __init__(self, directory: str, *, keep: Optional[int] = 3, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()  # Orbax refuses relative paths
    incomplete = incomplete_saves(self.directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(str(self.directory), options=options)
    if incomplete:  # the manager deletes them (cleanup_tmp_directories)
      latest = self.latest_step()
      logger.warning("%s: found an incomplete save (%s), left by a run stopped while writing it; "
                     "it is ignored and deleted, %s", self.directory, ", ".join(incomplete),
                     f"the newest complete checkpoint is step {latest}" if latest
                     else "there is no complete checkpoint (starting from step 0)")

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, metadata: Dict[str, Any]) -> None:
    """Saves ``state`` (after ``step`` steps) now; the caller decides the cadence."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state.as_dict()),
                              metadata=ocp.args.JsonSave({"step": step, **metadata}))
    self._manager.save(step, args=args, force=True)

  def restore(self, step: int, abstract_state: TrainState) -> Tuple[TrainState, Dict[str, Any]]:
    """Restores ``step`` into ``abstract_state``'s layout (ShapeDtypeStructs with shardings).

    Raises:
      ValueError: the checkpoint holds another model (every differing parameter is listed) or,
        with the same parameters, another optimizer state.
    """
    state_dir = self.directory / str(step) / "state"
    differences = param_differences(stored_params(state_dir),
                                    param_paths.flatten(abstract_state.params))
    if differences:
      raise ValueError(
          f"{self.directory} holds a different model (step {step}): {len(differences)} "
          "parameter(s) differ from this run's model. Train into a new MODEL_DIR, or start from "
          "those weights with runs/finetune.gin (INITIAL_CHECKPOINT_PATH; checkpoints."
          f"InitialCheckpoint.include selects what to restore):\n  {_listing(differences)}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state.as_dict()),
                              metadata=ocp.args.JsonRestore())
    try:
      restored = self._manager.restore(step, args=args)
    except ValueError as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"{state_dir}: the parameters match this model but the rest of the "
                       f"training state does not (another optimizer or optimizer settings?): "
                       f"{first_line}") from e
    return TrainState.from_dict(restored["state"]), dict(restored["metadata"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def incomplete_saves(directory: pathlib.Path) -> List[str]:
  """Names of the step folders a stopped run left half written in ``directory``: Orbax writes a
  step into ``<step>.orbax-checkpoint-tmp...`` and renames it only once it is complete."""
  if not directory.is_dir():
    return []
  return sorted(ocp.path.step.tmp_checkpoints(epath.Path(directory)))


# --- parameter restores -------------------------------------------------------------------------

def resolve_pytree_dir(path: str) -> pathlib.Path:
  """The Orbax pytree folder holding ``{'params': ...}`` for any accepted checkpoint path."""
  root = pathlib.Path(path).absolute()
  if not root.is_dir():
    raise FileNotFoundError(f"checkpoint {path!r} does not exist (or is not a folder)")
  if (root / "_METADATA").exists():
    return root  # params-only (StandardCheckpointer) or a step's ``state`` folder
  if (root / "state" / "_METADATA").exists():
    return root / "state"  # one step folder of a training run
  steps = sorted(int(p.name) for p in root.iterdir()
                 if p.name.isdigit() and (p / "state" / "_METADATA").exists())
  if steps:
    return root / str(steps[-1]) / "state"  # MODEL_DIR/checkpoints: the latest step
  if (root / "checkpoints").is_dir():
    return resolve_pytree_dir(str(root / "checkpoints"))  # MODEL_DIR itself
  incomplete = incomplete_saves(root)
  if incomplete:
    raise FileNotFoundError(
        f"{path!r} holds only an incomplete save ({', '.join(incomplete)}), left by a training run "
        "stopped while writing it, and no complete checkpoint; resume the training (palix train "
        "ignores it) to write one")
  raise FileNotFoundError(
      f"{path!r} is not a palix checkpoint: expected a params-only Orbax checkpoint saved as "
      "{'params': params}, a training run's checkpoints folder, or one <step> folder in it")


def stored_tree(pytree_dir) -> Any:
  """The metadata tree (shapes and dtypes, no arrays) of an Orbax PyTree folder."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return getattr(handler.metadata(epath.Path(pytree_dir)), "tree", None)
  finally:
    handler.close()


def stored_params(pytree_dir: pathlib.Path) -> Dict[str, Tuple[Tuple[int, ...], Any]]:
  """``{'a/b/kernel': (shape, dtype)}`` of the parameters stored under ``'params'``."""
  tree = stored_tree(pytree_dir)
  if not isinstance(tree, dict) or "params" not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise ValueError(f"checkpoint {str(pytree_dir)!r} has no 'params' entry (top level: {keys}); "
                     "params-only checkpoints must be saved as {'params': params}")
  return {path: (tuple(meta.shape), meta.dtype)
          for path, meta in param_paths.flatten(tree["params"]).items()}


def _nest(flat: Dict[str, Any]) -> Dict[str, Any]:
  root: Dict[str, Any] = {}
  for path, value in flat.items():
    node = root
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return root


def _mapping_errors(mapping: Dict[str, str], targets: Dict[str, Any],
                    stored: Dict[str, Tuple[Tuple[int, ...], Any]]) -> List[str]:
  errors = []
  for target, source in mapping.items():
    if source not in stored:
      close = difflib.get_close_matches(source, list(stored), n=1)
      hint = f" (closest stored name: {close[0]!r})" if close else ""
      errors.append(f"{target!r}: no parameter {source!r} in the checkpoint{hint}")
    elif stored[source][0] != tuple(targets[target].shape):
      errors.append(f"{target!r}: shape {tuple(targets[target].shape)} but the checkpoint's "
                    f"{source!r} has shape {stored[source][0]}")
  return errors


def param_differences(stored: Dict[str, Tuple[Tuple[int, ...], Any]],
                      targets: Dict[str, Any]) -> List[str]:
  """How a checkpoint's parameters (``stored_params``) differ from a model's, one line each: the
  same check as ``load_params``, plus the stored parameters the model does not have."""
  errors = _mapping_errors({path: path for path in targets if path in stored}, targets, stored)
  errors += [f"{path!r}: in this model (shape {tuple(target.shape)}) but not in the checkpoint"
             for path, target in targets.items() if path not in stored]
  errors += [f"{path!r}: in the checkpoint (shape {shape}) but not in this model"
             for path, (shape, _) in stored.items() if path not in targets]
  return errors


def _listing(errors: List[str], limit: int = 20) -> str:
  return "\n  ".join(errors[:limit]) + (f"\n  ... and {len(errors) - limit} more"
                                       if len(errors) > limit else "")


def load_params(path: str, abstract_params, *, include: Sequence[str] = (".*",),
                rename: Sequence[Tuple[str, str]] = ()) -> Dict[str, jax.Array]:
  """Reads the selected parameters into the target layout.

  Args:
    path: any checkpoint ``resolve_pytree_dir`` accepts.
    abstract_params: target tree of ``jax.ShapeDtypeStruct`` with shardings (values are cast to
      their dtype).
    include: regexes (full match) of *target* parameter paths to load.
    rename: ``(regex, replacement)`` pairs turning a target path into the stored path (the first
      fully matching regex applies, ``re`` group syntax), e.g. ``('vit/(.*)', 'img/\\1')``.

  Returns:
    ``{target path: array}`` for the selected parameters.

  Raises:
    ValueError: a pattern selects nothing, or a selected parameter is missing from the checkpoint
      or has another shape (every problem is listed).
  """
  pytree_dir = resolve_pytree_dir(path)
  stored = stored_params(pytree_dir)
  targets = param_paths.flatten(abstract_params)
  include_res = param_paths.compile_patterns(include, "include")
  param_paths.check_all_match(targets, include_res, "checkpoint restore include")
  renames = [(re.compile(p), r) for p, r in rename]
  mapping = {}
  for target in targets:
    if param_paths.matches_any(target, include_res):
      source = target
      for pattern, replacement in renames:
        if pattern.fullmatch(target):
          source = pattern.sub(replacement, target, count=1)
          break
      mapping[target] = source
  errors = _mapping_errors(mapping, targets, stored)
  if errors:
    raise ValueError(f"cannot restore {len(errors)} of {len(mapping)} selected parameters from "
                     f"{str(pytree_dir)!r}:\n  {_listing(errors)}")
  item = _nest({source: targets[t] for t, source in mapping.items()})
  restore_args = jax.tree.map(
      lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype, global_shape=s.shape),
      item)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(str(pytree_dir), args=ocp.args.PyTreeRestore(
        item={"params": item}, restore_args={"params": restore_args}, partial_restore=True))
  flat = param_paths.flatten(restored["params"])
  return {target: flat[source] for target, source in mapping.items()}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InitialCheckpoint:
  """Where a new run takes (some of) its parameters from (t5x's ``INITIAL_CHECKPOINT_PATH``).

  Only used when ``MODEL_DIR`` has no checkpoint yet; otherwise the run resumes from its own.
  Parameters not selected by ``include`` keep their fresh initialisation; the optimizer state is
  always fresh. See ``load_params`` for ``include`` and ``rename``.
  """
  path: str = gin.REQUIRED
  include: Sequence[str] = (".*",)
  rename: Sequence[Tuple[str, str]] = ()

  def apply(self, params, abstract_params):
    loaded = load_params(self.path, abstract_params, include=self.include, rename=self.rename)
    logger.info("initial checkpoint %s: restored %d of %d parameters", self.path, len(loaded),
                 len(param_paths.flatten(abstract_params)))
    return param_paths.map_with_path_str(lambda p, x: loaded.get(p, x), params)


def load_model_params(model, checkpoint_path: str, partitioner, input_shapes, input_types):
  """All of ``model``'s parameters from ``checkpoint_path`` (anything :func:`load_params`
  accepts), each read straight into the sharded layout of ``partitioner``
  (a ``palix.partitioning.Partitioner``). ``input_shapes``/``input_types`` (a batch geometry,
  e.g. ``model.input_shapes()``) size the model; the parameters do not depend on them."""
  boxed = train_state_lib.boxed_variable_shapes(model, jax.random.key(0), input_shapes,
                                                input_types)["params"]
  shardings = partitioner.param_shardings(boxed)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  loaded = load_params(checkpoint_path, abstract)
  return param_paths.map_with_path_str(lambda path, _: loaded[path], abstract)
