"""How sparse should a model be? The loss-minimising sparsity under a cost model.

Sparse training is not faster on today's accelerators: a model with ``N`` non-zero parameters at
sparsity ``S`` has ``N/(1−S)`` parameters and costs per example what that dense model costs. At a
fixed compute budget ``C ∝ N·D`` (``D``: the examples a *dense* ``N``-parameter model sees for
``C``) the sparse model therefore sees ``D·(1−S)`` examples, and the advisor minimises

    L(S, N, D·(1 − S))   over S ∈ [0, 1).

Sparsity lowers the parameter term and the shorter training raises the data term, so there is an
interior optimum once ``D`` is large enough. With ``x = 1 − S`` the derivative vanishes at

    x* = (b_D · e_D · N^{b_N} / (a_S · b_S · D^{b_D}))^{1/(b_S + b_D)},   S* = max(0, 1 − x*),

which is a minimum whenever the coefficients are positive (``closed_form_optimal_sparsity``); for
a fixed ``N``, ``x*`` falls as ``D^{−b_D/(b_S+b_D)}``: the optimal sparsity rises with the
training budget. ``optimal_sparsity`` minimises numerically, so it also works for fitted
coefficients without that shape.
"""

import numpy as np
import scipy.optimize

from palix.sparsity.law import LawCoefficients

MAX_SPARSITY = 0.999


def loss_at_fixed_compute(coefficients: LawCoefficients, sparsity, nonzero_params, dense_data):
  """L(S, N, D·(1−S)): the loss of the sparse model trained with the dense model's compute."""
  s = np.asarray(sparsity, np.float64)
  return coefficients.loss(s, nonzero_params, np.asarray(dense_data, np.float64) * (1.0 - s))


def optimal_sparsity(coefficients: LawCoefficients, nonzero_params: float, dense_data: float,
                     max_sparsity: float = MAX_SPARSITY) -> float:
  """argmin over S in [0, max_sparsity] of ``loss_at_fixed_compute`` (grid, then refined)."""
  if nonzero_params <= 0 or dense_data <= 0:
    raise ValueError(f"nonzero_params ({nonzero_params}) and data ({dense_data}) must be positive")
  grid = np.linspace(0.0, max_sparsity, 2001)
  with np.errstate(all="ignore"):
    losses = loss_at_fixed_compute(coefficients, grid, nonzero_params, dense_data)
  losses = np.where(np.isfinite(losses), losses, np.inf)
  i = int(np.argmin(losses))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  if hi <= lo:
    return float(grid[i])
  refined = scipy.optimize.minimize_scalar(
      lambda s: float(loss_at_fixed_compute(coefficients, s, nonzero_params, dense_data)),
      bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
  return float(refined.x) if refined.fun <= losses[i] else float(grid[i])


def closed_form_optimal_sparsity(coefficients: LawCoefficients, nonzero_params: float,
                                 dense_data: float) -> float:
  """The stationary point above (valid for positive ``a_S, b_S, e_D, b_D``), clipped at 0."""
  k = coefficients
  x = (k.b_D * k.e_D * nonzero_params ** k.b_N / (k.a_S * k.b_S * dense_data ** k.b_D)) ** (
      1.0 / (k.b_S + k.b_D))
  return float(max(0.0, 1.0 - x))
