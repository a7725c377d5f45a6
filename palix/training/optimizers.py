"""Optimizers (optax): Adafactor (t5x's default) and AdamW, plus what every run needs around them:
gradient clipping, a weight-decay mask, freezing and per-group learning rates by parameter-path
regex (``palix.training.param_paths``).

gin example (a fine-tuning run)::

  Optimizer.base = @adamw
  adamw.weight_decay = 1e-4
  Optimizer.learning_rate_fn = @schedules.cosine()
  Optimizer.clip_grad_norm = 1.0
  Optimizer.frozen = ['vit/.*']                        # no update, no optimizer state
  Optimizer.param_groups = [('text/decoder/.*', 0.1)]  # 0.1x learning rate; first match wins
  Optimizer.no_weight_decay = ['.*/bias', '.*/scale']

Gradient accumulation (microbatches) lives in the train step: ``train.num_microbatches``.
Weight sparsity wraps the whole chain: ``Optimizer.sparsity = @sparsity.Pruning()``
(``palix.sparsity``; masks live in the optimizer state, docs/sparsity.md).
"""

import dataclasses
import re
from typing import Any, Callable, Optional, Sequence, Tuple

import gin
import optax

from palix.training import param_paths

FROZEN = "frozen"
DEFAULT = "default"


@gin.configurable
def adafactor(learning_rate, weight_decay_mask=None, *, decay_rate: float = 0.8,
              multiply_by_parameter_scale: bool = True, clipping_threshold: Optional[float] = 1.0,
              min_dim_size_to_factor: int = 128, momentum: Optional[float] = None,
              eps: float = 1e-30, factored: bool = True,
              weight_decay: float = 0.0) -> optax.GradientTransformation:
  """t5x's Adafactor defaults (decay 0.8, parameter scaling, update clipping 1.0, factored)."""
  return optax.adafactor(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum, eps=eps, factored=factored,
      weight_decay_rate=weight_decay or None, weight_decay_mask=weight_decay_mask)


@gin.configurable
def adamw(learning_rate, weight_decay_mask=None, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 1e-4) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay (scaled by the learning rate, as in optax)."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                     mask=weight_decay_mask)


def _prefix_pattern(prefix: str) -> str:
  return re.escape(prefix.strip("/")) + "(/.*)?"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optimizer over a parameter tree, with parameter groups selected by path regex.

  Attributes:
    learning_rate_fn: ``step -> lr`` (``palix.training.schedules``).
    base: ``(learning_rate, weight_decay_mask) -> optax.GradientTransformation``
      (``adafactor`` or ``adamw``, configured by gin).
    clip_grad_norm: clip the global gradient norm to this value first (None: no clipping).
    frozen: path regexes of parameters that are not trained (no update, no optimizer state).
    param_groups: ``(path regex, learning-rate multiplier)`` pairs; the first match wins.
    no_weight_decay: path regexes excluded from the base optimizer's weight decay.
    sparsity: a ``palix.sparsity.Pruning`` (None: dense); it wraps the chain below and never
      prunes frozen parameters.
  """
  learning_rate_fn: Callable = gin.REQUIRED
  base: Callable[..., optax.GradientTransformation] = adafactor
  clip_grad_norm: Optional[float] = None
  frozen: Sequence[str] = ()
  param_groups: Sequence[Tuple[str, float]] = ()
  no_weight_decay: Sequence[str] = ()
  sparsity: Optional[Any] = None

  def __post_init__(self):
    for entry in self.param_groups:
      if len(entry) != 2 or not isinstance(entry[1], (int, float)):
        raise ValueError(f"Optimizer.param_groups entries must be (regex, lr_multiplier); got "
                         f"{entry!r}")

  def with_frozen_prefixes(self, prefixes: Sequence[str]) -> "Optimizer":
    """Also freeze these top-level subtrees (a model's ``frozen_param_prefixes()``)."""
    extra = tuple(_prefix_pattern(p) for p in prefixes)
    return dataclasses.replace(self, frozen=tuple(self.frozen) + extra) if extra else self

  def labels(self, params):
    """Tree of group labels: ``'frozen'``, ``'group<i>'`` or ``'default'``. Checks the patterns."""
    frozen = param_paths.compile_patterns(self.frozen, "Optimizer.frozen")
    groups = param_paths.compile_patterns([g[0] for g in self.param_groups],
                                          "Optimizer.param_groups")
    paths = list(param_paths.flatten(params))
    param_paths.check_all_match(paths, frozen, "Optimizer.frozen")
    param_paths.check_all_match(paths, groups, "Optimizer.param_groups")

    def label(path, _):
      if param_paths.matches_any(path, frozen):
        return FROZEN
      for i, pattern in enumerate(groups):
        if pattern.fullmatch(path):
          return f"group{i}"
      return DEFAULT

    return param_paths.map_with_path_str(label, params)

  def frozen_mask(self, params):
    """Tree of bools: True where the parameter is frozen."""
    return param_paths.map_with_path_str(lambda _, label: label == FROZEN, self.labels(params))

  def weight_decay_mask(self, params):
    """Tree of bools: True where weight decay applies. Works on masked (sub)trees too."""
    excluded = param_paths.compile_patterns(self.no_weight_decay, "Optimizer.no_weight_decay")
    return param_paths.map_with_path_str(
        lambda path, _: not param_paths.matches_any(path, excluded), params)

  def group_learning_rate(self, label: str) -> Callable:
    if label == DEFAULT:
      return self.learning_rate_fn
    multiplier = float(self.param_groups[int(label[len("group"):])][1])
    return lambda step: multiplier * self.learning_rate_fn(step)

  def make(self) -> optax.GradientTransformation:
    """The optax transformation: clip -> per-group base optimizer (frozen: no state)."""
    transforms = {FROZEN: optax.set_to_zero(), DEFAULT: self._base(DEFAULT)}
    for i in range(len(self.param_groups)):
      transforms[f"group{i}"] = self._base(f"group{i}")
    parts = []
    if self.clip_grad_norm:
      parts.append(optax.clip_by_global_norm(self.clip_grad_norm))
    parts.append(optax.multi_transform(transforms, self.labels))
    chain = optax.chain(*parts)
    return chain if self.sparsity is None else self.sparsity.wrap(chain, self.frozen_mask)

  def _base(self, label: str) -> optax.GradientTransformation:
    return self.base(self.group_learning_rate(label), self.weight_decay_mask)
