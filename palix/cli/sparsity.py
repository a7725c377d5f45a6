"""``palix sparsity {fit,advise,table,plot,export-nm}``: the sparse scaling law and n:m masks.

* ``fit RUNS.csv|json [--log_loss --delta D --holdout largest_data|width=64|random --bootstrap K
  --nonnegative --out FIT.json]``:
  fits the 7-coefficient law L(S, N, D) (Huber loss, random starts) and prints the coefficients,
  the fit error and, with ``--holdout``, the error on runs left out of the fit.
* ``advise --setting {vit,t5,FIT.json} --nonzero_params N --data D``: the loss-minimising sparsity
  at the compute of a dense N-parameter model seeing D (setting units); last line
  ``optimal sparsity: 0.NNN``.
* ``table --setting S --nonzero_params N1 N2 .. --data D1 D2 ..``: the same for a grid, as a
  markdown table.
* ``plot --setting S --out contour.png``: the optimal-sparsity contour over (N, D).
* ``export-nm --checkpoint DIR --out PATH [--n 2 --m 4 --axis 0]``: n:m masks of a pruned
  checkpoint as ``PATH.npz`` + ``PATH.json`` (format: ``palix.sparsity.nm_export``).
"""

import argparse
import re
import sys

import numpy as np

from palix.sparsity import advisor
from palix.sparsity import contour_plot
from palix.sparsity import law as law_lib
from palix.sparsity import nm_export
from palix.sparsity import runs_file

PROG = "palix sparsity"


def _setting_help():
  return ("'vit' or 't5' (the paper's coefficients) or a JSON file written by "
          f"'{PROG} fit --out'")


def _units(setting):
  return (f"N in {setting.units.get('N', 'the fit units')}; "
          f"D in {setting.units.get('D', 'the fit units')}")


# --- fit ----------------------------------------------------------------------------------------

def _holdout_split(runs, how: str, fraction: float, seed: int):
  n = len(runs)
  if how == "none":
    return np.ones(n, bool)
  if "=" in how:  # COLUMN=VALUE: hold out the runs whose column has this value
    column, value = how.split("=", 1)
    if column not in runs[0]:
      raise ValueError(f"--holdout {how}: the runs have no column {column!r} (columns: "
                       f"{', '.join(runs[0])})")
    held = np.array([_same(r[column], value) for r in runs])
    if not held.any():
      raise ValueError(f"--holdout {how}: no run has {column} = {value}")
    return ~held
  if how in ("largest_data", "largest_params"):
    column = "data" if how == "largest_data" else "nonzero_params"
    values = np.array([r[column] for r in runs])
    return values < values.max()
  if how != "random":
    raise ValueError(f"--holdout {how!r}: expected none, largest_data, largest_params, random or "
                     "COLUMN=VALUE")
  rng = np.random.default_rng(seed)
  test = rng.permutation(n)[:max(1, int(round(fraction * n)))]
  train = np.ones(n, bool)
  train[test] = False
  return train


def _same(stored, value: str) -> bool:
  try:
    return float(stored) == float(value)
  except ValueError:
    return str(stored) == value


def _errors(coeffs, s, n, d, loss):
  pred = coeffs.loss(s, n, d)
  return pred, float(np.sqrt(np.mean((pred - loss) ** 2))), float(np.mean(np.abs(pred - loss) / loss))


def _fit(args) -> int:
  runs = runs_file.read_runs(args.runs)
  s, n, d, loss = runs_file.columns(runs)
  train = _holdout_split(runs, args.holdout, args.holdout_fraction, args.seed)
  if train.sum() < len(law_lib.NAMES):
    raise ValueError(f"--holdout {args.holdout} leaves {int(train.sum())} runs to fit "
                     f"{len(law_lib.NAMES)} coefficients")
  fit = law_lib.fit_law(s[train], n[train], d[train], loss[train], delta=args.delta,
                        log_loss=args.log_loss, starts=args.starts, seed=args.seed,
                        nonnegative=args.nonnegative)
  c = fit.coefficients
  print(f"runs: {len(runs)} ({int(train.sum())} fitted, {int((~train).sum())} held out: "
        f"{args.holdout})")
  print(f"form: {law_lib.FORM}")
  print("coefficients: " + "  ".join(f"{k}={getattr(c, k):.5g}" for k in law_lib.NAMES))
  spread = np.array(fit.objectives)
  print(f"huber objective: {fit.objective:.4g} (delta={args.delta}, log_loss={args.log_loss}, "
        f"nonnegative={args.nonnegative}); "
        f"{fit.successful_starts}/{fit.starts} starts converged, objectives "
        f"{spread.min():.4g}..{spread.max():.4g}")
  if not fit.best_converged:
    print("warning: the best start stopped at scipy's evaluation budget, not at a minimum: the "
          "runs do not pin some coefficients down (see --bootstrap; try --nonnegative)")
  _, rmse, rel = _errors(c, s[train], n[train], d[train], loss[train])
  print(f"fit error on fitted runs: rmse {rmse:.4g}, mean relative {100 * rel:.2f}%")
  if args.bootstrap:
    _bootstrap(args, s[train], n[train], d[train], loss[train])
  if (~train).any():
    pred, rmse, rel = _errors(c, s[~train], n[~train], d[~train], loss[~train])
    print("held-out runs (sparsity, nonzero_params, data): measured -> predicted")
    for i, p in zip(np.flatnonzero(~train), pred):
      print(f"  {s[i]:.4g}, {n[i]:.4g}, {d[i]:.4g}: {loss[i]:.4f} -> {p:.4f}")
    print(f"held-out error: rmse {rmse:.4g}, mean relative {100 * rel:.2f}%")
  if args.out:
    units = {"N": args.units_n, "D": args.units_d}
    law_lib.save_setting(law_lib.Setting(
        "fit", c, units, f"fitted by {PROG} fit on {args.runs}",
        {"huber_delta": args.delta, "log_loss": args.log_loss, "objective": fit.objective}),
        args.out)
    print(f"wrote {args.out}")
  return 0


def _bootstrap(args, s, n, d, loss):
  """Refits on resampled runs: how tightly does the sweep pin each coefficient?"""
  rng = np.random.default_rng(args.seed + 1)
  vectors = []
  for _ in range(args.bootstrap):
    idx = rng.integers(0, len(s), len(s))
    try:
      fit = law_lib.fit_law(s[idx], n[idx], d[idx], loss[idx], delta=args.delta,
                            log_loss=args.log_loss, starts=max(3, args.starts // 3),
                            seed=int(rng.integers(1 << 30)), nonnegative=args.nonnegative)
    except ValueError:
      continue
    vectors.append(fit.coefficients.vector())
  if not vectors:
    print("bootstrap: no resample converged")
    return
  v = np.array(vectors)
  lo, mid, hi = np.percentile(v, [5, 50, 95], axis=0)
  print(f"bootstrap ({len(v)} of {args.bootstrap} resamples fitted): median [5%, 95%]")
  for k, a, b, m in zip(law_lib.NAMES, lo, hi, mid):
    print(f"  {k}: {m:.4g} [{a:.4g}, {b:.4g}]")


# --- advise / table / plot ----------------------------------------------------------------------

def _advise(args) -> int:
  setting = law_lib.load_setting(args.setting)
  coeffs = setting.coefficients
  best = advisor.optimal_sparsity(coeffs, args.nonzero_params, args.data)
  print(f"setting: {setting.name} ({setting.description}); {_units(setting)}")
  print("cost model: a model with N non-zeros at sparsity S costs what its dense N/(1-S) model "
        "costs, so at the compute of a dense N model seeing D it sees D*(1-S)")
  print(f"N = {args.nonzero_params:g}, D = {args.data:g}")
  print("sparsity  total_params  data_seen  predicted_loss")
  for sparsity in sorted({0.0, 0.5, 0.75, 0.875, best}):
    loss = advisor.loss_at_fixed_compute(coeffs, sparsity, args.nonzero_params, args.data)
    marker = "  <- optimum" if sparsity == best else ""
    print(f"{sparsity:8.3f}  {args.nonzero_params / (1 - sparsity):12.4g}  "
          f"{args.data * (1 - sparsity):9.4g}  {float(loss):14.5f}{marker}")
  print(f"optimal sparsity: {best:.3f}")
  return 0


def _table(args) -> int:
  setting = law_lib.load_setting(args.setting)
  print(f"optimal sparsity, setting {setting.name}: {_units(setting)}; rows D, columns N")
  print("| D \\ N | " + " | ".join(f"{n:g}" for n in args.nonzero_params) + " |")
  print("|---|" + "---|" * len(args.nonzero_params))
  for d in args.data:
    cells = [f"{advisor.optimal_sparsity(setting.coefficients, n, d):.3f}"
             for n in args.nonzero_params]
    print(f"| {d:g} | " + " | ".join(cells) + " |")
  return 0


def _plot(args) -> int:
  setting = law_lib.load_setting(args.setting)
  contour_plot.plot_contour(setting, (args.n_min, args.n_max), (args.d_min, args.d_max), args.out,
                            points=args.points)
  print(f"wrote {args.out}")
  return 0


# --- export-nm ----------------------------------------------------------------------------------

def _export_nm(args) -> int:
  from palix.sparsity import counting  # pylint: disable=g-import-not-at-top  (loads JAX/Orbax)

  params = counting.read_checkpoint_params(args.checkpoint)
  if args.include:
    patterns = [re.compile(p) for p in args.include]
    for pattern in patterns:
      if not any(pattern.fullmatch(p) for p in params):
        raise ValueError(f"--include {pattern.pattern!r} matches no parameter of "
                         f"{args.checkpoint} (paths look like {', '.join(list(params)[:3])})")
    chosen = {p: x for p, x in params.items() if any(r.fullmatch(p) for r in patterns)}
  else:
    chosen = {}
    for path, x in params.items():
      if x.ndim < 2:
        continue
      try:
        nm_export.pack_nm(x, args.n, args.m, args.axis, path)
        chosen[path] = x
      except ValueError as e:
        print(f"skipped (not {args.n}:{args.m}): {e}")
  if not chosen:
    raise ValueError(f"no tensor of {args.checkpoint} is {args.n}:{args.m} sparse along axis "
                     f"{args.axis}")
  npz, js = nm_export.export_nm_masks(chosen, args.n, args.m, args.axis, args.out)
  print(f"exported {len(chosen)} {args.n}:{args.m} masks: {npz} {js}")
  return 0


def _parser():
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="action", required=True)

  fit = sub.add_parser("fit", help="fit L(S, N, D) to a CSV/JSON of runs")
  fit.add_argument("runs", help="CSV or JSON with sparsity, nonzero_params, data, loss")
  fit.add_argument("--delta", type=float, default=0.01, help="Huber delta (paper: ViT 0.01)")
  fit.add_argument("--log_loss", action="store_true", help="fit log losses (paper's T5 fit)")
  fit.add_argument("--starts", type=int, default=25, help="random starts (paper: 25)")
  fit.add_argument("--seed", type=int, default=0)
  fit.add_argument("--holdout", default="none",
                   help="runs left out of the fit and predicted: none, largest_data, "
                   "largest_params, random, or COLUMN=VALUE (e.g. width=64)")
  fit.add_argument("--holdout_fraction", type=float, default=0.25, help="for --holdout random")
  fit.add_argument("--bootstrap", type=int, default=0, help="refit on K resamples of the runs")
  fit.add_argument("--nonnegative", action="store_true",
                   help="bound every coefficient below by 0 (the paper's fits are unbounded)")
  fit.add_argument("--out", help="write the fit as a setting JSON (for advise --setting)")
  fit.add_argument("--units_n", default="as in the runs file", help="unit of N, for --out")
  fit.add_argument("--units_d", default="as in the runs file", help="unit of D, for --out")

  advise = sub.add_parser("advise", help="the loss-minimising sparsity for (N, D)")
  table = sub.add_parser("table", help="optimal sparsity for a grid of (N, D)")
  plot = sub.add_parser("plot", help="optimal-sparsity contour over (N, D) to a PNG")
  for p in (advise, table, plot):
    p.add_argument("--setting", required=True, help=_setting_help())
  advise.add_argument("--nonzero_params", type=float, required=True,
                      help="non-zero parameters N, in the setting's units (paper: millions)")
  advise.add_argument("--data", type=float, required=True,
                      help="D: what a dense N-parameter model sees for the compute, setting units")
  table.add_argument("--nonzero_params", type=float, nargs="+", required=True)
  table.add_argument("--data", type=float, nargs="+", required=True)
  plot.add_argument("--out", required=True, help="PNG path")
  plot.add_argument("--n_min", type=float, default=1.0)
  plot.add_argument("--n_max", type=float, default=1e4)
  plot.add_argument("--d_min", type=float, default=0.1)
  plot.add_argument("--d_max", type=float, default=1e3)
  plot.add_argument("--points", type=int, default=60)

  export = sub.add_parser("export-nm", help="n:m masks of a checkpoint to .npz + .json")
  export.add_argument("--checkpoint", required=True)
  export.add_argument("--out", required=True, help="output path without extension")
  export.add_argument("--n", type=int, default=2)
  export.add_argument("--m", type=int, default=4)
  export.add_argument("--axis", type=int, default=0)
  export.add_argument("--include", nargs="+", help="path regexes (default: every n:m tensor)")
  return parser


ACTIONS = {"fit": _fit, "advise": _advise, "table": _table, "plot": _plot,
           "export-nm": _export_nm}


def run(argv):
  args = _parser().parse_args(argv)
  try:
    return ACTIONS[args.action](args)
  except (ValueError, RuntimeError) as e:
    print(f"{PROG} {args.action}: {e}", file=sys.stderr)
    return 2
