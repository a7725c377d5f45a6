"""Learning-rate schedules: ``step -> learning rate`` functions, usable inside ``jit``.

* ``rsqrt``: ViT-22B / big_vision's "rsqrt" (linear warmup, reciprocal-square-root decay with a
  timescale, optional linear cooldown to 0). With ``linear_warmup=False`` and
  ``timescale=warmup_steps`` it is t5x's ``constant * rsqrt_decay``:
  ``base / sqrt(max(step, warmup) / warmup)``.
* ``cosine``: linear warmup then a half cosine from ``base`` to ``end_factor * base``.
* ``constant``: optional linear warmup, then flat.

Every schedule is a gin configurable that *returns* the schedule, e.g.
``Optimizer.learning_rate_fn = @schedules.rsqrt()``.
"""

from typing import Callable, Optional

import gin
import jax.numpy as jnp

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _warmup_factor(step, warmup_steps: int):
  if warmup_steps <= 0:
    return 1.0
  return jnp.minimum(1.0, step / warmup_steps)


def _check(name: str, **values) -> None:
  for key, value in values.items():
    if value is not None and value < 0:
      raise ValueError(f"schedules.{name}: {key} must be >= 0, got {value}")


@gin.configurable
def rsqrt(base_learning_rate: float = 1e-3, *, warmup_steps: int = 10_000,
          timescale: int = 10_000, cooldown_steps: int = 0, total_steps: Optional[int] = None,
          linear_warmup: bool = True) -> Schedule:
  """``base * warmup(step) * decay(step) * cooldown(step)`` with

  * ``warmup = min(1, step / warmup_steps)`` (1 if ``linear_warmup`` is False);
  * ``decay = 1 / sqrt((step - warmup_steps + timescale) / timescale)`` after warmup, else 1;
  * ``cooldown = clip((total_steps - step) / cooldown_steps, 0, 1)`` when ``cooldown_steps > 0``.
  """
  _check("rsqrt", warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
  if timescale <= 0:
    raise ValueError(f"schedules.rsqrt: timescale must be > 0, got {timescale}")
  if cooldown_steps and total_steps is None:
    raise ValueError("schedules.rsqrt: cooldown_steps needs total_steps")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    shifted = (step - warmup_steps + timescale) / timescale
    lr = jnp.where(step > warmup_steps, base_learning_rate / jnp.sqrt(shifted), base_learning_rate)
    if linear_warmup:
      lr = lr * _warmup_factor(step, warmup_steps)
    if cooldown_steps:
      lr = lr * jnp.clip((total_steps - step) / cooldown_steps, 0.0, 1.0)
    return lr

  return schedule


@gin.configurable
def cosine(base_learning_rate: float = 1e-3, *, total_steps: int = gin.REQUIRED,
           warmup_steps: int = 0, end_factor: float = 0.0) -> Schedule:
  """Linear warmup, then ``base * (end + (1 - end) * (1 + cos(pi * progress)) / 2)``."""
  _check("cosine", warmup_steps=warmup_steps, total_steps=total_steps)
  if total_steps <= warmup_steps:
    raise ValueError(f"schedules.cosine: total_steps ({total_steps}) must exceed warmup_steps "
                     f"({warmup_steps})")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    factor = end_factor + (1.0 - end_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return base_learning_rate * factor * _warmup_factor(step, warmup_steps)

  return schedule


@gin.configurable
def constant(base_learning_rate: float = 1e-3, *, warmup_steps: int = 0) -> Schedule:
  """``base * min(1, step / warmup_steps)``."""
  _check("constant", warmup_steps=warmup_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return base_learning_rate * _warmup_factor(step, warmup_steps) * jnp.ones_like(step)

  return schedule
