"""Magnitude pruning inside the optimizer: masks live in the optimizer state.

``Pruning`` wraps an optax transformation (``palix.training.optimizers.Optimizer`` does it when
``Optimizer.sparsity`` is bound)::

  import palix.sparsity
  Optimizer.sparsity = @sparsity.Pruning()
  sparsity.Pruning.sparsity = 0.75
  sparsity.Pruning.schedule = @sparsity.GradualSchedule()
  sparsity.GradualSchedule.total_steps = %TRAIN_STEPS

Why the optimizer and not the train step's ``param_mask_fn``: the masks are state. Kept in the
optimizer state they are saved and restored by Orbax with everything else (a resumed run continues
with the same masks, not ones recomputed from already-pruned weights), and the partitioner gives
each mask its parameter's sharding because the mask tree mirrors the parameter tree.

Each update:

1. at the schedule's update steps, new masks from the current weights' magnitudes (entries already
   pruned stay pruned);
2. gradients of pruned entries are zeroed *before* the wrapped chain, so gradient clipping, Adam's
   moments and Adafactor's factored statistics never see them;
3. the wrapped chain's moment-shaped state (Adam's ``mu``/``nu``, unfactored Adafactor statistics)
   is zeroed at pruned entries, so nothing leaks if pruning is later switched off;
4. pruned entries get the update ``-w``: ``w + (-w)`` is exactly 0, so they stay exactly zero.

Which tensors (the paper's defaults, papers.md §2.1): every parameter with ``ndim >= 2`` except
relative-position tables (and biases, which reach ndim 2 in attention layers); embeddings (``token_embedder``, ``logits_dense``) are pruned to
``1 − √(1 − S)``; frozen parameters are never pruned. ``include``/``exclude``/``embeddings`` replace
these defaults with path regexes (full match against ``'decoder/layers_0/mlp/wi/kernel'``).
"""

import dataclasses
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import optax

from palix.sparsity import schedule as schedule_lib
from palix.sparsity import structures
from palix.training import param_paths

# Relative-position tables (the paper) and biases: DenseGeneral's [heads, head_dim] attention
# biases have ndim 2 but are not weights of a matmul.
DEFAULT_EXCLUDE = (r"(.*/)?rel(ative)?_?pos[^/]*(/.*)?", r"(.*/)?bias")
DEFAULT_EMBEDDINGS = (r"(.*/)?token_embedder/.*", r"(.*/)?logits_dense/.*")


class PruningState(NamedTuple):
  """``count``: updates done; ``masks``: the parameter tree with a bool mask for every pruned
  tensor and ``optax.MaskedNode()`` elsewhere; ``inner_state``: the wrapped chain's state."""
  count: jax.Array
  masks: Any
  inner_state: Any


def embedding_sparsity(sparsity: float) -> float:
  """The paper's embedding sparsity for a model at ``sparsity``: ``1 − √(1 − S)``."""
  return 1.0 - math.sqrt(1.0 - sparsity)


@gin.configurable(module="palix.sparsity")
@dataclasses.dataclass(frozen=True)
class Pruning:
  """Gradual magnitude pruning, held in the optimizer state.

  Attributes:
    sparsity: target share of zeros in each pruned tensor, in [0, 1). Implied (``1 − n/m``) and
      best left unset for ``NM``/``IterativeNM``.
    structure: ``Unstructured()``, ``NM(n, m, axis)`` or ``IterativeNM(n, m, axis)``.
    schedule: ``GradualSchedule(...)`` (cubic GMP) or ``OneShot(at_step)``; None: ``OneShot(0)``.
    include: path regexes of candidate tensors (None: all); tensors with fewer than ``min_ndim``
      dimensions are never pruned.
    exclude: path regexes never pruned (None: relative-position tables and biases).
    embeddings: path regexes pruned to ``1 − √(1 − S)`` with unstructured masks (None:
      ``token_embedder``, ``logits_dense``; ``()``: none).
    min_ndim: smallest rank that is pruned (2: matrices and up; biases and norms stay dense).

  A pattern you give that matches no parameter is an error (a typo would silently prune nothing).
  """
  sparsity: Optional[float] = None
  structure: Any = structures.Unstructured()
  schedule: Any = None
  include: Optional[Sequence[str]] = None
  exclude: Optional[Sequence[str]] = None
  embeddings: Optional[Sequence[str]] = None
  min_ndim: int = 2

  def __post_init__(self):
    s = self.sparsity
    if s is not None and (not isinstance(s, (int, float)) or not 0.0 <= s < 1.0):
      raise ValueError(f"Pruning.sparsity = {s!r}: must be a number in [0, 1)")
    target = self.structure.target_sparsity(s)
    if target is None:
      raise ValueError("Pruning.sparsity is required for unstructured pruning (e.g. "
                       "sparsity.Pruning.sparsity = 0.75)")

  @property
  def target(self) -> float:
    return float(self.structure.target_sparsity(self.sparsity))

  def _schedule(self):
    return schedule_lib.OneShot(0) if self.schedule is None else self.schedule

  def targets(self, params, frozen_mask=None) -> Dict[str, Tuple[float, Any]]:
    """``{path: (target sparsity, structure)}`` of the tensors this config prunes."""
    flat = param_paths.flatten(params)
    frozen = param_paths.flatten(frozen_mask) if frozen_mask is not None else {}
    include = self._patterns(self.include, None, "Pruning.include", flat)
    exclude = self._patterns(self.exclude, DEFAULT_EXCLUDE, "Pruning.exclude", flat)
    embeddings = self._patterns(self.embeddings, DEFAULT_EMBEDDINGS, "Pruning.embeddings", flat)
    out = {}
    for path, leaf in flat.items():
      if (len(leaf.shape) < self.min_ndim or frozen.get(path, False)
          or (include is not None and not param_paths.matches_any(path, include))
          or param_paths.matches_any(path, exclude)):
        continue
      if param_paths.matches_any(path, embeddings):
        out[path] = (embedding_sparsity(self.target), structures.Unstructured())
      else:
        self.structure.check(path, leaf.shape)
        out[path] = (self.target, self.structure)
    if not out:
      raise ValueError(f"Pruning selects no parameter (min_ndim={self.min_ndim}, include="
                       f"{self.include}, exclude={self.exclude}); paths look like "
                       f"{', '.join(list(flat)[:5])}")
    return out

  @staticmethod
  def _patterns(given, default, what, flat):
    if given is None:
      return None if default is None else param_paths.compile_patterns(default, what)
    compiled = param_paths.compile_patterns(given, what)
    param_paths.check_all_match(flat, compiled, what)
    return compiled

  def wrap(self, inner: optax.GradientTransformation,
           frozen_mask_fn: Optional[Callable[[Any], Any]] = None) -> optax.GradientTransformation:
    """``inner`` with pruning around it. ``frozen_mask_fn(params)``: tensors never pruned."""
    schedule = self._schedule()

    def selection(params):
      return self.targets(params, frozen_mask_fn(params) if frozen_mask_fn else None)

    def init_fn(params):
      chosen = selection(params)
      masks = param_paths.map_with_path_str(
          lambda path, p: jnp.ones(p.shape, jnp.bool_) if path in chosen else optax.MaskedNode(),
          params)
      return PruningState(count=jnp.zeros((), jnp.int32), masks=masks,
                          inner_state=inner.init(params))

    def update_fn(updates, state, params=None):
      if params is None:
        raise ValueError("Pruning needs the parameters in update(grads, state, params)")
      chosen = selection(params)
      t = state.count
      fraction = schedule.fraction(t)

      def recompute(masks):
        return param_paths.map_with_path_str(
            lambda path, p, m: (chosen[path][1].mask(p, m, chosen[path][0] * fraction)
                                if path in chosen else m), params, masks)

      masks = jax.lax.cond(schedule.is_update(t), recompute, lambda m: m, state.masks)
      grads = apply_masks(updates, masks)
      inner_updates, inner_state = inner.update(grads, state.inner_state, params)
      inner_state = zero_pruned_moments(inner_state, masks)
      final = jax.tree.map(
          lambda u, p, m: u if isinstance(m, optax.MaskedNode) else jnp.where(m, u, -p),
          inner_updates, params, masks)
      return final, PruningState(count=t + 1, masks=masks, inner_state=inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def apply_masks(tree, masks):
  """``tree`` with the pruned entries of every masked tensor set to 0."""
  return jax.tree.map(
      lambda x, m: x if isinstance(m, optax.MaskedNode) else jnp.where(m, x, jnp.zeros_like(x)),
      tree, masks)


def _masks_by_path(masks) -> Dict[Tuple[str, ...], jax.Array]:
  flat = jax.tree_util.tree_flatten_with_path(masks)[0]
  return {tuple(param_paths.key_name(k) for k in path): m for path, m in flat}


def _trailing_dict_names(path) -> Tuple[str, ...]:
  names = []
  for key in reversed(path):
    if not isinstance(key, jax.tree_util.DictKey):
      break
    names.append(str(key.key))
  return tuple(reversed(names))


def zero_pruned_moments(inner_state, masks):
  """Zeros the pruned entries of every state leaf shaped like a pruned parameter and found under
  its path (Adam's ``mu``/``nu``, Adafactor's unfactored ``v``); other leaves are untouched."""
  by_path = _masks_by_path(masks)
  if not by_path:
    return inner_state

  def fix(path, leaf):
    tail = _trailing_dict_names(path)
    for start in range(len(tail)):
      mask = by_path.get(tail[start:])
      if mask is not None:
        return jnp.where(mask, leaf, jnp.zeros_like(leaf)) if leaf.shape == mask.shape else leaf
    return leaf

  return jax.tree_util.tree_map_with_path(fix, inner_state)


def find_pruning_state(opt_state) -> Optional[PruningState]:
  """The ``PruningState`` inside an optimizer state (None if the run does not prune)."""
  if isinstance(opt_state, PruningState):
    return opt_state
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruningState))
           if isinstance(s, PruningState)]
  return found[0] if found else None
