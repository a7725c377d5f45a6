"""The sparse scaling law: the shipped coefficients, the fit, and the optimal-sparsity advisor."""

import numpy as np
import pytest

from palix.sparsity import advisor
from palix.sparsity import law as law_lib

PAPER = law_lib.paper_settings()


def test_law_by_hand():
  c = law_lib.LawCoefficients(a_S=2.0, b_S=0.5, c_S=1.0, b_N=0.5, e_D=3.0, b_D=1.0, c=0.25)
  # S = 0.75: (2 * 0.25^0.5 + 1) * 16^-0.5 + 3 * 6^-1 + 0.25 = 2 / 4 + 0.5 + 0.25
  assert c.loss(0.75, 16.0, 6.0) == pytest.approx(1.25)


def test_shipped_coefficients_reproduce_the_notebooks_t5_extrapolation():
  # The notebook evaluates its T5 fit at S = 0.75, N = 48 * 12 * 1024^2 / 1e6, D = 500k steps / 1e5
  # and plots it against the measured loss 1.48278 of that run.
  predicted = PAPER["t5"].coefficients.loss(0.75, 48 * 12 * 1024 ** 2 / 1e6, 5.0)
  assert predicted == pytest.approx(1.48278, rel=0.015)


def test_settings_carry_units():
  assert PAPER["vit"].units["D"] == "billions of training examples"
  assert PAPER["t5"].units["D"] == "units of 1e5 training steps"
  assert PAPER["vit"].units["N"] == PAPER["t5"].units["N"] == "millions of non-zero parameters"


def test_fit_recovers_known_coefficients_from_noisy_synthetic_runs():
  truth = law_lib.LawCoefficients(a_S=1.2, b_S=0.8, c_S=2.0, b_N=0.4, e_D=0.3, b_D=0.9, c=4.5)
  s, n, d = np.meshgrid([0.0, 0.5, 0.75, 0.875], [1.0, 4.0, 16.0, 64.0], [0.5, 2.0, 8.0])
  s, n, d = s.ravel(), n.ravel(), d.ravel()
  loss = truth.loss(s, n, d) * (1 + 1e-4 * np.random.default_rng(0).standard_normal(s.size))
  fit = law_lib.fit_law(s, n, d, loss, delta=0.01, starts=8, seed=0)
  pred = fit.coefficients.loss(s, n, d)
  assert np.sqrt(np.mean((pred - loss) ** 2)) < 2e-3
  # Predictions outside the fitted range (4x more data) stay close to the truth.
  assert fit.coefficients.loss(0.5, 16.0, 32.0) == pytest.approx(truth.loss(0.5, 16.0, 32.0),
                                                                  rel=5e-3)


def test_fit_recovers_the_paper_coefficients_from_noise_free_runs():
  """BFGS (the notebook's optimizer) stops at a wrong data term on this sweep; ours must not."""
  truth = PAPER["vit"].coefficients
  s, n, d = (x.ravel() for x in np.meshgrid([0.0, 0.5, 0.75, 0.875], [2.0, 8.0, 32.0],
                                            [0.5, 1.0, 2.0]))
  fit = law_lib.fit_law(s, n * (1 - s), d, truth.loss(s, n * (1 - s), d), starts=10)
  np.testing.assert_allclose(fit.coefficients.vector(), truth.vector(), rtol=1e-4)


def test_nonnegative_fit_keeps_every_coefficient_at_or_above_zero():
  rng = np.random.default_rng(1)
  s, n, d = (x.ravel() for x in np.meshgrid([0.0, 0.5, 0.75], [1.0, 4.0, 16.0], [1.0, 2.0, 4.0]))
  loss = 1.5 - 0.2 * np.log(d) + 0.1 * rng.standard_normal(s.size) ** 2  # log-like: c wants < 0
  fit = law_lib.fit_law(s, n, d, loss, starts=4, nonnegative=True)
  assert np.all(fit.coefficients.vector() >= 0)


def test_too_few_runs():
  with pytest.raises(ValueError, match="needs at least 7 runs"):
    law_lib.fit_law([0.0] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3)


@pytest.mark.parametrize("name", ["vit", "t5"])
def test_advisor_matches_closed_form_and_brute_force(name):
  coeffs = PAPER[name].coefficients
  for n, d in [(10.0, 1.0), (100.0, 10.0), (1000.0, 100.0), (30.0, 0.3)]:
    best = advisor.optimal_sparsity(coeffs, n, d)
    assert best == pytest.approx(advisor.closed_form_optimal_sparsity(coeffs, n, d), abs=1e-4)
    grid = np.linspace(0, 0.999, 100_000)
    brute = grid[np.argmin(advisor.loss_at_fixed_compute(coeffs, grid, n, d))]
    assert best == pytest.approx(brute, abs=1e-4)


@pytest.mark.parametrize("name", ["vit", "t5"])
def test_optimal_sparsity_rises_with_data_for_fixed_nonzeros(name):
  """The paper's finding, from its own coefficients."""
  coeffs = PAPER[name].coefficients
  for n in (10.0, 100.0, 1000.0):
    values = [advisor.optimal_sparsity(coeffs, n, d) for d in np.geomspace(0.1, 1000, 9)]
    assert np.all(np.diff(values) >= 0) and values[-1] > values[0] + 0.3, (n, values)
  # Short training: dense is optimal; long training: well above 50%.
  assert advisor.optimal_sparsity(coeffs, 1000.0, 0.1) == 0.0
  assert advisor.optimal_sparsity(coeffs, 10.0, 1000.0) > 0.8


def test_cost_model_sees_fewer_examples():
  c = PAPER["vit"].coefficients
  assert advisor.loss_at_fixed_compute(c, 0.75, 50.0, 8.0) == pytest.approx(c.loss(0.75, 50.0, 2.0))


def test_fit_file_round_trip(tmp_path):
  setting = law_lib.Setting("fit", PAPER["t5"].coefficients, {"N": "M", "D": "k"}, "x",
                            {"objective": 1.0})
  path = tmp_path / "fit.json"
  law_lib.save_setting(setting, str(path))
  assert law_lib.load_setting(str(path)).coefficients == setting.coefficients


def test_bad_setting_files(tmp_path):
  with pytest.raises(ValueError, match="neither one of"):
    law_lib.load_setting(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text('{"coefficients": {"a_S": 1}}')
  with pytest.raises(ValueError, match="lacks coefficients"):
    law_lib.load_setting(str(bad))
