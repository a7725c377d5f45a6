"""The sparse scaling law L(S, N, D) and its fit (papers.md §2.1).

    L(S, N, D) = (a_S·(1 − S)^{b_S} + c_S) · N^{−b_N} + e_D · D^{−b_D} + c

``S`` is the sparsity, ``N`` the number of non-zero parameters and ``D`` the training data, each
in its setting's units (the paper: millions of parameters; billions of examples for ViT, 1e5 steps
for T5). The paper writes the data term ``(a_D / D)^{b_D}``, so ``e_D = a_D^{b_D}``.

The fit minimises the paper's objective: the mean Huber loss of the residuals (raw loss with
δ = 0.01 for ViT; log loss with δ = 1e-3, Chinchilla's choice, for T5) from several uniform(0, 1)
random starts, best objective kept. The paper's notebook minimises it with
``scipy.optimize.minimize`` (BFGS); we use ``scipy.optimize.least_squares(loss='huber',
f_scale=δ)``, whose cost is the same Huber sum, because BFGS on the Huber's linear branch often
stops early: on noise-free runs generated from the ViT coefficients it ended at an objective of
1.3e-4 with wrong data-term coefficients from all 25 starts, where ``least_squares`` recovers
them exactly (tests/sparsity/test_law.py).
"""

import dataclasses
import json
import pathlib
from typing import Dict, Optional, Sequence

import numpy as np
import scipy.optimize

NAMES = ("a_S", "b_S", "c_S", "b_N", "e_D", "b_D", "c")
FORM = "L(S, N, D) = (a_S * (1 - S)^b_S + c_S) * N^(-b_N) + e_D * D^(-b_D) + c"


@dataclasses.dataclass(frozen=True)
class LawCoefficients:
  a_S: float
  b_S: float
  c_S: float
  b_N: float
  e_D: float
  b_D: float
  c: float

  @classmethod
  def from_vector(cls, v) -> "LawCoefficients":
    return cls(*(float(x) for x in v))

  def vector(self) -> np.ndarray:
    return np.array([getattr(self, n) for n in NAMES], np.float64)

  def loss(self, sparsity, nonzero_params, data):
    return law(self.vector(), sparsity, nonzero_params, data)


def law(v, sparsity, nonzero_params, data):
  """The law for a coefficient vector in ``NAMES`` order (numpy, broadcasting)."""
  a_s, b_s, c_s, b_n, e_d, b_d, c = v
  s, n, d = (np.asarray(x, np.float64) for x in (sparsity, nonzero_params, data))
  # (1/(1−S))^(−b_S) == (1−S)^(b_S): the notebook's negative-exponent form, stabler to fit.
  return (a_s * (1.0 / (1.0 - s)) ** -b_s + c_s) * n ** -b_n + e_d * d ** -b_d + c


def huber_objective(v, sparsity, nonzero_params, data, loss, delta: float, log_loss: bool):
  """Mean Huber loss of the residuals (of log losses when ``log_loss``)."""
  with np.errstate(all="ignore"):
    pred = law(v, sparsity, nonzero_params, data)
    res = np.abs(np.log(pred) - np.log(loss)) if log_loss else np.abs(pred - loss)
  if not np.all(np.isfinite(res)):
    return np.inf
  quadratic = res <= delta
  return float(np.sum(np.where(quadratic, 0.5 * res ** 2, delta * (res - 0.5 * delta))) / res.size)


@dataclasses.dataclass(frozen=True)
class FitResult:
  coefficients: LawCoefficients
  objective: float
  starts: int
  successful_starts: int  # starts that met scipy's convergence tolerances
  objectives: Sequence[float]  # per start, to show how reproducible the optimum is
  best_converged: bool = True  # False: the best start stopped at the evaluation budget


def _residuals(v, sparsity, nonzero_params, data, loss, log_loss: bool):
  with np.errstate(all="ignore"):
    pred = law(v, sparsity, nonzero_params, data)
    res = np.log(pred) - np.log(loss) if log_loss else pred - loss
  # Parameters where the law is undefined (negative base, log of a negative) are far off.
  return np.where(np.isfinite(res), res, 1e3)


def fit_law(sparsity, nonzero_params, data, loss, *, delta: float = 0.01, log_loss: bool = False,
            starts: int = 25, seed: int = 0, nonnegative: bool = False) -> FitResult:
  """Fits the 7 coefficients; raises if no start converges.

  ``nonnegative`` bounds every coefficient below by 0 (the paper's fits are unbounded). On small
  sweeps far from the irreducible loss, an unbounded fit may trade ``c`` against ``e_D`` with
  ``b_D`` near 0 (a logarithm in disguise) and end with a negative ``c``.
  """
  arrays = [np.asarray(x, np.float64) for x in (sparsity, nonzero_params, data, loss)]
  if len(arrays[0]) < len(NAMES):
    raise ValueError(f"fitting {len(NAMES)} coefficients needs at least {len(NAMES)} runs; got "
                     f"{len(arrays[0])}")
  rng = np.random.default_rng(seed)
  best, best_objective, objectives, converged = None, np.inf, [], 0
  for _ in range(starts):
    result = scipy.optimize.least_squares(
        _residuals, rng.uniform(size=len(NAMES)), args=(*arrays, log_loss), loss="huber",
        f_scale=delta, bounds=(0.0, np.inf) if nonnegative else (-np.inf, np.inf))
    objective = huber_objective(result.x, *arrays, delta, log_loss)
    if result.status < 0 or not np.isfinite(objective):
      continue
    # status 0: the evaluation budget ran out, typically while coefficients drift off together
    # (a direction the runs do not pin down); the iterate is still a valid fit, so it competes.
    converged += result.status > 0
    objectives.append(objective)
    if objective < best_objective:
      best, best_objective = result, objective
  if best is None:
    raise ValueError(f"no fit from {starts} random starts reached a finite objective; check the "
                     "units (keep N, D and L of order 0.1-1000) or add runs")
  return FitResult(LawCoefficients.from_vector(best.x), float(best_objective), starts,
                   converged, tuple(objectives), bool(best.status > 0))


# --- settings: coefficients with their units ----------------------------------------------------

PAPER_FILE = pathlib.Path(__file__).resolve().parent / "data" / "paper_coefficients.json"


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  coefficients: LawCoefficients
  units: Dict[str, str]
  description: str = ""
  fit: Optional[Dict[str, float]] = None

  def to_json(self) -> Dict:
    return {"description": self.description, "units": dict(self.units),
            "coefficients": dataclasses.asdict(self.coefficients), "fit": self.fit or {}}


def paper_settings() -> Dict[str, Setting]:
  """The paper's published fits (``vit``, ``t5``), shipped in ``data/paper_coefficients.json``."""
  raw = json.loads(PAPER_FILE.read_text())
  return {name: _setting(name, entry, str(PAPER_FILE)) for name, entry in raw["settings"].items()}


def _setting(name: str, entry, where: str) -> Setting:
  if not isinstance(entry, dict) or not isinstance(entry.get("coefficients"), dict):
    raise ValueError(f"{where}: setting {name!r} has no 'coefficients' object")
  coeffs = entry["coefficients"]
  missing = [n for n in NAMES if n not in coeffs]
  if missing:
    raise ValueError(f"{where}: setting {name!r} lacks coefficients {missing} (expected {NAMES})")
  bad = [n for n in NAMES if not isinstance(coeffs[n], (int, float)) or isinstance(coeffs[n], bool)]
  if bad:
    raise ValueError(f"{where}: setting {name!r}: coefficients {bad} are not numbers")
  return Setting(name, LawCoefficients(**{n: float(coeffs[n]) for n in NAMES}),
                 dict(entry.get("units", {})), entry.get("description", ""), entry.get("fit"))


def load_setting(name_or_file: str) -> Setting:
  """``'vit'``/``'t5'`` (the paper's) or a JSON file written by ``palix sparsity fit --out``."""
  settings = paper_settings()
  if name_or_file in settings:
    return settings[name_or_file]
  path = pathlib.Path(name_or_file)
  if not path.is_file():
    raise ValueError(f"--setting {name_or_file!r}: neither one of {sorted(settings)} nor a file")
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  return _setting(path.stem, raw, str(path))


def save_setting(setting: Setting, path: str) -> None:
  pathlib.Path(path).write_text(json.dumps({"form": FORM, **setting.to_json()}, indent=1) + "\n")
