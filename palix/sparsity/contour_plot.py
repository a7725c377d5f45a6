"""The optimal-sparsity contour over (N, D) as a PNG (matplotlib, imported only here)."""

import numpy as np

from palix.sparsity import advisor
from palix.sparsity.law import Setting


def optimal_sparsity_grid(setting: Setting, n_range, d_range, points: int = 60):
  """``(N grid, D grid, S_opt[len(D), len(N)])`` on log-spaced axes."""
  ns = np.geomspace(*n_range, points)
  ds = np.geomspace(*d_range, points)
  grid = np.array([[advisor.optimal_sparsity(setting.coefficients, n, d) for n in ns] for d in ds])
  return ns, ds, grid


def plot_contour(setting: Setting, n_range, d_range, out_path: str, points: int = 60) -> None:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise RuntimeError("palix sparsity plot needs matplotlib (pip install -c constraints.txt "
                       "'.[eval]')") from e
  ns, ds, grid = optimal_sparsity_grid(setting, n_range, d_range, points)
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  filled = ax.contourf(ns, ds, grid, levels=np.linspace(0, 1, 21), cmap="viridis")
  lines = ax.contour(ns, ds, grid, levels=[0.5, 0.75, 0.875, 0.9375], colors="white",
                     linewidths=0.8)
  ax.clabel(lines, fmt="%.3g", fontsize=8)
  ax.set_xscale("log")
  ax.set_yscale("log")
  units = setting.units
  ax.set_xlabel(f"N ({units.get('N', 'non-zero parameters, setting units')})")
  ax.set_ylabel(f"D ({units.get('D', 'setting units')}) a dense N model sees")
  ax.set_title(f"Optimal sparsity at fixed compute: {setting.name}")
  fig.colorbar(filled, ax=ax, label="optimal sparsity")
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
