"""The training loop: one ``train()`` for every ``palix.models.base.BaseModel``.

``train`` takes keyword-only, gin-injectable parts (t5x's shape): the model, a batch source, an
``Optimizer``, a ``Partitioner`` and checkpoint settings. It

1. asks the partitioner which rows of the global batch this process loads;
2. resumes from the newest checkpoint in ``MODEL_DIR/checkpoints`` (state, step = data position,
   RNG), or initialises fresh parameters directly in their sharded layout and optionally restores
   some of them from an ``InitialCheckpoint``;
3. runs jitted train steps, logging scalars to TensorBoard and ``MODEL_DIR/metrics.jsonl``, with a
   tqdm progress bar, and stops with ``FloatingPointError`` naming the step if the loss is NaN/Inf;
   when the batch source names the tasks of its batches' ``task_ids`` (``palix.training.data``),
   each task's loss and token accuracy too (``task_loss/<task>``, ``task_accuracy/<task>``: over
   the logging period, per target token), on the progress line and in a log line per period;
4. saves every ``checkpoint_period`` steps and at the end.
"""

import dataclasses
import itertools
import logging
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional

import gin
import jax
import numpy as np
import tqdm

from palix import partitioning
from palix.training import checkpoints as checkpoints_lib
from palix.training import metrics_writer as metrics_writer_lib
from palix.training import run_config
from palix.training import train_step as train_step_lib
from palix.training.optimizers import Optimizer
from palix.training.train_state import StateFactory, TrainState

logger = logging.getLogger(__name__)


def task_scalars(sums: Mapping[str, np.ndarray], task_names) -> Dict[str, float]:
  """Per-task loss and token accuracy from a period's ``per_task/`` sums (tasks without target
  tokens in the period are left out)."""
  tokens = sums.get(train_step_lib.PER_TASK + "tokens")
  if tokens is None or not task_names:
    return {}
  out = {}
  for i, name in enumerate(task_names):
    if tokens[i] > 0:
      out[f"task_loss/{name}"] = float(sums[train_step_lib.PER_TASK + "loss"][i] / tokens[i])
      out[f"task_accuracy/{name}"] = float(sums[train_step_lib.PER_TASK + "correct"][i]
                                           / tokens[i])
  return out


class _StepMonitor:
  """Checks each step's loss one step late (so dispatch stays asynchronous) and writes averages."""

  def __init__(self, writer, *, log_period: int, batch_size: int, total_steps: int,
               start_step: int, progress_bar: bool, task_names=()):
    self.writer, self.log_period, self.batch_size = writer, log_period, batch_size
    self.task_names = tuple(task_names)
    self._pending = None
    self._sums: Dict[str, float] = {}
    self._count = 0
    self._last_values: Dict[str, float] = {}
    self._resolved_step = start_step
    self._last_time, self._last_step = None, start_step
    self.pbar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                          disable=not (progress_bar and writer.enabled))

  def push(self, step: int, metrics) -> None:
    self.flush()
    self._pending = (step, metrics)

  def finish(self) -> None:
    """Resolves the last step and writes what the period has gathered so far."""
    self.flush()
    if self._count:
      self._write(self._resolved_step, self._last_values)

  def flush(self) -> None:
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    values = {k: np.asarray(v, np.float64) if np.ndim(v) else float(v)
              for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values["loss"]):
      raise FloatingPointError(f"loss is {values['loss']} at step {step} (the loss of batch "
                               f"{step - 1}, counting from 0); stopping. The last checkpoint "
                               "precedes it.")
    if self._last_time is None:  # the first step includes compilation: time from its end
      self._last_time, self._last_step = time.time(), step
    for k, v in values.items():
      self._sums[k] = self._sums.get(k, 0.0) + v
    self._count += 1
    self._last_values, self._resolved_step = values, step
    self.pbar.update(1)
    if step % self.log_period == 0:
      self._write(step, values)

  def _write(self, step: int, last: Mapping[str, float]) -> None:
    scalars = {k: v / self._count for k, v in self._sums.items()
               if not k.startswith(train_step_lib.PER_TASK)}
    tasks = task_scalars(self._sums, self.task_names)
    scalars.update(tasks)
    scalars["learning_rate"] = last["learning_rate"]
    now, steps = time.time(), step - self._last_step
    if steps > 0:
      scalars["step_time_s"] = (now - self._last_time) / steps
      # Packed rows hold several examples: count the model's examples when it reports them.
      per_step = scalars.get("num_examples", self.batch_size)
      scalars["examples_per_s"] = per_step * steps / (now - self._last_time)
    self._last_time, self._last_step = now, step
    self.writer.write_scalars(step, scalars)
    postfix = {"loss": f"{scalars['loss']:.4f}"}
    postfix.update({k.split("/", 1)[1]: f"{v:.3f}" for k, v in tasks.items()
                    if k.startswith("task_loss/")})
    self.pbar.set_postfix(postfix, refresh=False)
    if tasks and self.writer.enabled:
      logger.info("step %d per task (loss, token accuracy): %s", step, "; ".join(
          f"{name} {tasks[f'task_loss/{name}']:.3f} {100 * tasks[f'task_accuracy/{name}']:.1f}%"
          for name in self.task_names if f"task_loss/{name}" in tasks))
    self._sums, self._count = {}, 0

  def close(self) -> None:
    self.pbar.close()


def _restore_or_initialize(factory: StateFactory, ckpts: checkpoints_lib.Checkpoints,
                           start_step: int, data_info: Mapping[str, Any],
                           initial_checkpoint: Optional[checkpoints_lib.InitialCheckpoint]
                           ) -> TrainState:
  if start_step:
    state, metadata = ckpts.restore(start_step, factory.abstract_state)
    changed = {k: (metadata.get(k), v) for k, v in data_info.items() if metadata.get(k) != v}
    if changed:
      logger.warning("resuming step %d with a different data setup %s (saved, now): the data "
                      "order will not continue exactly", start_step, changed)
    logger.info("resumed from %s at step %d", ckpts.directory, start_step)
    return state
  state = factory.initialize()
  if initial_checkpoint is not None:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            factory.abstract_params, factory.param_shardings)
    params = initial_checkpoint.apply(state.params, abstract)
    state = state.replace(params=params, opt_state=factory.init_opt_state(params))
  return state


def _batch_geometry(batch, layout: partitioning.DataLayout):
  """Global shapes and dtypes of a batch (of its first part, for ``batch_parts``): they size
  the model's initial variables, which do not depend on the batch geometry."""
  if isinstance(batch, (tuple, list)):
    batch = batch[0]
  rows = len(next(iter(batch.values()))) * layout.num_shards
  shapes = {k: (rows,) + tuple(np.shape(v)[1:]) for k, v in batch.items()}
  types = {k: np.asarray(v).dtype for k, v in batch.items()}
  return shapes, types


def _shard(partitioner: partitioning.Partitioner, batch, layout: partitioning.DataLayout):
  """Global arrays of a local batch; each part of a ``batch_parts`` tuple has its own rows."""
  if not isinstance(batch, (tuple, list)):
    return partitioner.shard_batch(batch, layout)
  parts = []
  for part in batch:
    rows = len(next(iter(part.values())))
    part_layout = dataclasses.replace(layout, global_batch_size=rows * layout.num_shards,
                                      local_batch_size=rows)
    parts.append(partitioner.shard_batch(part, part_layout))
  return tuple(parts)


@gin.configurable
def train(*, model=gin.REQUIRED, model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          get_batches_fn: Callable = gin.REQUIRED, optimizer: Optimizer = gin.REQUIRED,
          partitioner: Optional[partitioning.Partitioner] = None, split: str = "train",
          seed: int = 0, checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          async_checkpointing: bool = True,
          initial_checkpoint: Optional[checkpoints_lib.InitialCheckpoint] = None,
          log_period: int = 100, num_microbatches: int = 1,
          param_mask_fn: Optional[train_step_lib.ParamMaskFn] = None,
          progress_bar: bool = True) -> TrainState:
  """Trains ``model`` until ``train_steps`` steps are done (resuming if ``model_dir`` has some).

  Args:
    model: a ``BaseModel``; its ``frozen_param_prefixes()`` are frozen too.
    model_dir: checkpoints, ``config.gin``, TensorBoard events and ``metrics.jsonl`` go here.
    train_steps: total steps (a resumed run counts the steps already done).
    batch_size: global batch size (all processes together).
    mixture_or_task_name, task_feature_lengths, split: passed to ``get_batches_fn``.
    get_batches_fn: the batch source (``palix.training.data``).
    optimizer: an ``Optimizer``.
    partitioner: mesh and rules (default: ``Partitioner()``, pure data parallelism).
    seed: parameter init, dropout RNG and data order.
    checkpoint_period, keep_checkpoints, async_checkpointing: checkpoint cadence and retention.
    initial_checkpoint: parameters for a fresh run (fine-tuning); ignored when resuming.
    log_period: steps between metric writes (scalars are averages over the period).
    num_microbatches: gradient accumulation inside a step.
    param_mask_fn: ``(params, step) -> params`` after each update (``train_step``).
    progress_bar: show tqdm on the first process.

  Returns:
    The final ``TrainState``.
  """
  partitioner = partitioner or partitioning.Partitioner()
  layout = partitioner.data_layout(batch_size)
  model.check_feature_lengths(task_feature_lengths)  # TASK_FEATURE_LENGTHS fit the model
  ckpts = checkpoints_lib.Checkpoints(os.path.join(model_dir, "checkpoints"),
                                      keep=keep_checkpoints, async_save=async_checkpointing)
  start_step = ckpts.latest_step() or 0
  data_info = {"mixture_or_task_name": mixture_or_task_name, "split": split,
               "batch_size": batch_size, "seed": seed}
  batches = get_batches_fn(mixture_or_task_name, split=split, batch_size=layout.local_batch_size,
                           feature_lengths=dict(task_feature_lengths), seed=seed, shuffle=True,
                           repeat=True, start_step=start_step, shard_index=layout.shard_index,
                           num_shards=layout.num_shards)
  first = next(batches)  # its shapes size the model
  task_names = tuple(getattr(batches, "task_names", ()))
  optimizer = optimizer.with_frozen_prefixes(model.frozen_param_prefixes())
  factory = StateFactory(model, optimizer.make(), partitioner,
                         *_batch_geometry(first, layout), seed=seed)
  run_config.check_command_line_bindings_read()  # every configurable of the run has been called
  state = _restore_or_initialize(factory, ckpts, start_step, data_info, initial_checkpoint)
  if start_step >= train_steps:
    logger.info("%s already holds step %d and train_steps is %d: training is complete, nothing to "
                "do (raise TRAIN_STEPS to train further)", ckpts.directory, start_step, train_steps)
  else:
    logger.info("training steps %d..%d of %r: batch %d (%d rows on shard %d of %d), mesh %s",
                start_step + 1, train_steps, mixture_or_task_name, batch_size,
                layout.local_batch_size, layout.shard_index, layout.num_shards,
                dict(partitioner.mesh.shape))
  step_fn = jax.jit(
      train_step_lib.make_train_step(model, factory.tx, optimizer.learning_rate_fn,
                                     optimizer.frozen_mask(factory.abstract_params),
                                     num_microbatches=num_microbatches,
                                     param_mask_fn=param_mask_fn, num_tasks=len(task_names)),
      out_shardings=(factory.shardings, partitioner.replicated), donate_argnums=(0,))
  writer = metrics_writer_lib.MetricsWriter(os.path.join(model_dir, "train"),
                                            os.path.join(model_dir, "metrics.jsonl"),
                                            enabled=jax.process_index() == 0)
  writer.truncate_after(start_step)
  monitor = _StepMonitor(writer, log_period=log_period, batch_size=batch_size,
                         total_steps=train_steps, start_step=start_step, progress_bar=progress_bar,
                         task_names=task_names)
  try:
    with partitioner.context():
      local_batches = itertools.chain([first], batches)
      for step in range(start_step + 1, train_steps + 1):
        local_batch = next(local_batches, None)
        if local_batch is None:
          raise ValueError(f"the batch source {mixture_or_task_name!r} ended before step {step}; "
                           "training sources must repeat")
        state, metrics = step_fn(state, _shard(partitioner, local_batch, layout))
        monitor.push(step, metrics)
        if step == start_step + 1 and writer.enabled:
          run_config.write_config(model_dir)
        if step % checkpoint_period == 0 or step == train_steps:
          monitor.flush()  # never save past a NaN
          ckpts.save(step, state, data_info)
      monitor.finish()
  finally:
    monitor.close()
    writer.close()
    ckpts.close()
  return state
