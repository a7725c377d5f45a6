"""When masks change and how sparse they are: gradual magnitude pruning's cubic schedule.

Zhu & Gupta's schedule, as the sparse scaling-law paper uses it (papers.md §2.1): sparsity rises
from 0 at ``start_fraction`` of training to the target at ``end_fraction`` as

    s_t = target · (1 − (1 − p_t)^power),   p_t = clip((t − start) / (end − start), 0, 1),

with masks recomputed every ``update_every`` optimizer updates in ``[start, end]`` (and at
``end``). ``t`` counts the optimizer updates already done, so the update of training step ``k``
(1-based) sees ``t = k − 1``. The paper's setting: 25% → 75% of training, every 100 steps, cubic.
"""

import dataclasses

import gin
import jax.numpy as jnp


@gin.configurable(module="palix.sparsity")
@dataclasses.dataclass(frozen=True)
class GradualSchedule:
  """The cubic GMP schedule over ``total_steps`` (bind it to the run's ``%TRAIN_STEPS``)."""
  total_steps: int = gin.REQUIRED
  start_fraction: float = 0.25
  end_fraction: float = 0.75
  update_every: int = 100
  power: float = 3.0

  def __post_init__(self):
    if not isinstance(self.total_steps, int) or self.total_steps < 1:
      raise ValueError(f"GradualSchedule.total_steps = {self.total_steps!r}: must be a positive "
                       "integer (bind it to %TRAIN_STEPS)")
    if not 0.0 <= self.start_fraction <= self.end_fraction <= 1.0:
      raise ValueError(f"GradualSchedule: need 0 <= start_fraction <= end_fraction <= 1; got "
                       f"start_fraction={self.start_fraction}, end_fraction={self.end_fraction}")
    if self.update_every < 1:
      raise ValueError(f"GradualSchedule.update_every = {self.update_every}: must be >= 1")
    if self.power <= 0:
      raise ValueError(f"GradualSchedule.power = {self.power}: must be > 0")

  @property
  def start_step(self) -> int:
    return int(round(self.start_fraction * self.total_steps))

  @property
  def end_step(self) -> int:
    return int(round(self.end_fraction * self.total_steps))

  def fraction(self, t):
    """Share of the target sparsity reached at update ``t`` (0 before start, 1 from end on)."""
    start, end = self.start_step, self.end_step
    t = jnp.asarray(t, jnp.float32)
    if end == start:
      return jnp.where(t >= start, 1.0, 0.0)
    progress = jnp.clip((t - start) / (end - start), 0.0, 1.0)
    return 1.0 - (1.0 - progress) ** self.power

  def is_update(self, t):
    """Whether the masks are recomputed at update ``t``."""
    start, end = self.start_step, self.end_step
    t = jnp.asarray(t, jnp.int32)
    in_window = (t >= start) & (t <= end)
    return in_window & (((t - start) % self.update_every == 0) | (t == end))


@gin.configurable(module="palix.sparsity")
@dataclasses.dataclass(frozen=True)
class OneShot:
  """Prune to the target at update ``at_step`` (0: sparse from the first step) and keep it."""
  at_step: int = 0

  def fraction(self, t):
    return jnp.where(jnp.asarray(t) >= self.at_step, 1.0, 0.0)

  def is_update(self, t):
    return jnp.asarray(t) == self.at_step
