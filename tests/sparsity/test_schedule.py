"""The cubic GMP schedule: start, middle and end values, and when masks are recomputed."""

import numpy as np
import pytest

from palix import sparsity


def test_cubic_schedule_hits_start_middle_and_end():
  sched = sparsity.GradualSchedule(total_steps=1000, start_fraction=0.25, end_fraction=0.75,
                                   update_every=100)
  assert (sched.start_step, sched.end_step) == (250, 750)
  assert float(sched.fraction(0)) == 0.0
  assert float(sched.fraction(250)) == 0.0
  assert float(sched.fraction(500)) == pytest.approx(1 - 0.5 ** 3)  # 0.875 of the target
  assert float(sched.fraction(750)) == 1.0
  assert float(sched.fraction(999)) == 1.0
  # Zhu & Gupta: s_t = s_f (1 - (1 - p)^3), hand-computed at p = 0.3.
  assert float(sched.fraction(400)) == pytest.approx(1 - 0.7 ** 3, rel=1e-6)


def test_update_steps_every_period_inside_the_window():
  sched = sparsity.GradualSchedule(total_steps=1000, update_every=100)
  updates = [t for t in range(1000) if bool(sched.is_update(t))]
  assert updates == [250, 350, 450, 550, 650, 750]
  uneven = sparsity.GradualSchedule(total_steps=100, update_every=30)
  assert [t for t in range(100) if bool(uneven.is_update(t))] == [25, 55, 75]  # end always


def test_fraction_is_monotone():
  sched = sparsity.GradualSchedule(total_steps=200, update_every=1)
  values = np.array([float(sched.fraction(t)) for t in range(200)])
  assert np.all(np.diff(values) >= 0)


def test_one_shot():
  sched = sparsity.OneShot(at_step=3)
  assert [bool(sched.is_update(t)) for t in range(5)] == [False, False, False, True, False]
  assert [float(sched.fraction(t)) for t in range(5)] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(total_steps=0), "positive integer"),
    (dict(total_steps=10, start_fraction=0.8, end_fraction=0.5), "start_fraction <= end"),
    (dict(total_steps=10, update_every=0), "update_every"),
])
def test_bad_schedules(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sparsity.GradualSchedule(**kwargs)
