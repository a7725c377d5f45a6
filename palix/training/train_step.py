"""One optimisation step: gradients (optionally over microbatches), optimizer update, metrics.

* Frozen parameters get ``stop_gradient`` (their backward pass is dead code) and are copied
  through unchanged, so they stay bit-identical.
* ``num_microbatches = k`` splits the batch into ``k`` interleaved microbatches (rows ``i, i+k,
  ...``, so every data shard contributes to each) and averages their gradients: the same update as
  one big batch when the model's loss is a mean over equally weighted examples.
* ``param_mask_fn(params, step) -> params`` runs after the update (a projection of the weights,
  e.g. clipping); it must be jittable. Weight sparsity is not done here but in the optimizer
  (``palix.sparsity``: its masks are optimizer state, saved and resumed with it).

A batch may also be a tuple of parts of different geometry (``batch_parts`` of the data layer):
one gradient over all of them, each part weighted by its share of the rows.

Metrics: the model's own (averaged over microbatches and parts; names starting with ``num_`` are
summed),
plus ``learning_rate``, ``grad_norm`` (before clipping) and ``param_norm``.

Per-task metrics: a model may return per-example sums under ``per_example/<name>`` (one value
per example, aligned with the batch's ``task_ids``; ``PaliXModel.loss_fn`` gives ``loss``,
``tokens`` and ``correct``). The step adds them up per task, ``per_task/<name>`` ``[num_tasks]``
(sums over microbatches and parts too), and the trainer turns the sums of a logging period into
each task's loss and token accuracy. Without ``task_ids`` or ``num_tasks`` they are dropped.
"""

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import optax

from palix.training.train_state import TrainState

ParamMaskFn = Callable[[Any, jax.Array], Any]
PER_EXAMPLE = "per_example/"
PER_TASK = "per_task/"


def is_sum(name: str) -> bool:
  """Metrics that add up over microbatches and parts (counts and per-task sums)."""
  return name.startswith(("num_", PER_TASK))


def task_sums(metrics: Dict[str, jax.Array], batch, num_tasks: int) -> Dict[str, jax.Array]:
  """``per_example/<name>`` values -> ``per_task/<name>`` sums ``[num_tasks]`` by ``task_ids``."""
  metrics = dict(metrics)
  per_example = {k[len(PER_EXAMPLE):]: metrics.pop(k) for k in list(metrics)
                 if k.startswith(PER_EXAMPLE)}
  if not per_example or not num_tasks or "task_ids" not in batch:
    return metrics
  ids = jnp.reshape(batch["task_ids"], (-1,))
  for name, values in per_example.items():
    metrics[PER_TASK + name] = jax.ops.segment_sum(jnp.reshape(values, (-1,)), ids,
                                                   num_segments=num_tasks)
  return metrics


def _loss_and_grads(model, frozen_mask, params, batch, rng, num_tasks: int = 0):

  def loss_fn(p):
    p = jax.tree.map(lambda frozen, x: jax.lax.stop_gradient(x) if frozen else x, frozen_mask, p)
    loss, metrics = model.loss_fn(p, batch, rng)
    return loss, {**metrics, "loss": loss}

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return grads, task_sums(metrics, batch, num_tasks)


def _combine_metrics(metrics: Dict[str, jax.Array], num_microbatches: int) -> Dict[str, jax.Array]:
  return {k: v if is_sum(k) else v / num_microbatches for k, v in metrics.items()}


def accumulate_gradients(model, frozen_mask, params, batch, rng, num_microbatches: int = 1,
                         num_tasks: int = 0):
  """Mean gradients and metrics over ``num_microbatches`` interleaved microbatches.

  ``batch`` may be a tuple of parts of different geometry (``palix.tasks.dataset``'s
  ``batch_parts``): each part's gradient and metrics are weighted by its share of the rows.
  ``num_tasks``: per-task sums (see the module docstring).
  """
  if isinstance(batch, (tuple, list)):
    return _accumulate_parts(model, frozen_mask, params, batch, rng, num_microbatches,
                             num_tasks)
  if num_microbatches == 1:
    return _loss_and_grads(model, frozen_mask, params, batch, rng, num_tasks)
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  if batch_size % num_microbatches:
    raise ValueError(f"batch size {batch_size} is not divisible by num_microbatches "
                     f"{num_microbatches}")
  # [B, ...] -> [k, B/k, ...] with microbatch i = rows i, i+k, i+2k, ...
  micro = jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape((batch_size // num_microbatches, num_microbatches)
                                       + x.shape[1:]), 0, 1), batch)

  def body(carry, inputs):
    index, microbatch = inputs
    grads, metrics = _loss_and_grads(model, frozen_mask, params, microbatch,
                                     jax.random.fold_in(rng, index), num_tasks)
    return jax.tree.map(jnp.add, carry, (grads, metrics)), None

  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(lambda: _loss_and_grads(model, frozen_mask, params, first, rng,
                                                  num_tasks))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
  grads = jax.tree.map(lambda g: g / num_microbatches, grads)
  return grads, _combine_metrics(metrics, num_microbatches)


def _accumulate_parts(model, frozen_mask, params, parts, rng, num_microbatches, num_tasks):
  rows = [jax.tree.leaves(part)[0].shape[0] for part in parts]
  shares = [count / sum(rows) for count in rows]
  results = [accumulate_gradients(model, frozen_mask, params, part, jax.random.fold_in(rng, index),
                                  num_microbatches, num_tasks) for index, part in enumerate(parts)]
  grads = jax.tree.map(lambda *g: sum(w * x for w, x in zip(shares, g)),
                       *[grads for grads, _ in results])
  metrics = {k: sum(m[k] if is_sum(k) else w * m[k]
                    for w, (_, m) in zip(shares, results)) for k in results[0][1]}
  return grads, metrics


def make_train_step(model, tx: optax.GradientTransformation, learning_rate_fn: Callable,
                    frozen_mask, *, num_microbatches: int = 1,
                    param_mask_fn: Optional[ParamMaskFn] = None, num_tasks: int = 0):
  """``step(state, batch) -> (state, metrics)`` (not jitted; the trainer jits it with shardings).
  ``num_tasks``: the tasks ``task_ids`` counts (per-task sums; 0: none)."""

  def step(state: TrainState, batch):
    grads, metrics = accumulate_gradients(model, frozen_mask, state.params, batch,
                                          state.step_rng(), num_microbatches, num_tasks)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = jax.tree.map(lambda frozen, old, new: old if frozen else new, frozen_mask,
                          state.params, params)
    if param_mask_fn is not None:
      params = param_mask_fn(params, state.step + 1)
    metrics = {**metrics, "learning_rate": learning_rate_fn(state.step),
               "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params)}
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step
