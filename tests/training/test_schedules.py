"""Learning-rate schedules against their closed forms, computed independently in numpy."""

import math

import numpy as np
import pytest

from palix.training import schedules

STEPS = np.array([0, 1, 5, 99, 100, 101, 250, 1000, 1950, 1999, 2000, 2500])


def _values(schedule):
  return np.array([float(schedule(s)) for s in STEPS])


def test_rsqrt_matches_big_vision_closed_form():
  base, warmup, timescale, cooldown, total = 1e-3, 100, 50, 100, 2000
  got = _values(schedules.rsqrt(base, warmup_steps=warmup, timescale=timescale,
                                cooldown_steps=cooldown, total_steps=total))
  want = []
  for s in STEPS:
    lr = base * min(1.0, s / warmup)
    if s > warmup:
      lr = base / math.sqrt((s - warmup + timescale) / timescale)
    lr *= min(1.0, max(0.0, (total - s) / cooldown))
    want.append(lr)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  assert got[0] == 0 and got[STEPS.tolist().index(100)] == pytest.approx(base)  # warmup peak
  assert got[-1] == 0 and got[-2] == 0  # cooled down at and after total_steps


def test_rsqrt_without_linear_warmup_is_t5x_rsqrt_decay():
  # t5x: lr = 1 / sqrt(max(step, warmup)); here base = 1/sqrt(warmup), timescale = warmup.
  warmup = 100
  got = _values(schedules.rsqrt(1 / math.sqrt(warmup), warmup_steps=warmup, timescale=warmup,
                                linear_warmup=False))
  want = [1 / math.sqrt(max(s, warmup)) for s in STEPS]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cosine_closed_form():
  base, warmup, total, end = 2e-3, 100, 2000, 0.1
  got = _values(schedules.cosine(base, total_steps=total, warmup_steps=warmup, end_factor=end))
  want = []
  for s in STEPS:
    progress = min(1.0, max(0.0, (s - warmup) / (total - warmup)))
    want.append(base * min(1.0, s / warmup) * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi *
                                                                                       progress))))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  assert got[-1] == pytest.approx(base * end)


def test_constant_with_warmup():
  got = _values(schedules.constant(0.5, warmup_steps=100))
  np.testing.assert_allclose(got, [0.5 * min(1.0, s / 100) for s in STEPS], rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: schedules.rsqrt(1.0, timescale=0), "timescale"),
    (lambda: schedules.rsqrt(1.0, cooldown_steps=5), "total_steps"),
    (lambda: schedules.cosine(1.0, total_steps=10, warmup_steps=10), "exceed"),
    (lambda: schedules.constant(1.0, warmup_steps=-1), "warmup_steps"),
])
def test_bad_arguments_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make()
