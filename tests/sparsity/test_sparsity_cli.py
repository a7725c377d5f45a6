"""``palix sparsity``: advise/table/plot with the paper's coefficients, fit with a held-out split,
and the bad-input messages."""

import numpy as np
import pytest

from palix.cli import main as palix_main
from palix.cli import sparsity as cli
from palix.sparsity import advisor
from palix.sparsity import law as law_lib


def test_advise_last_line_is_the_optimum(capsys):
  assert palix_main.main(["sparsity", "advise", "--setting", "vit", "--nonzero_params", "100",
                          "--data", "10"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  expected = advisor.closed_form_optimal_sparsity(law_lib.paper_settings()["vit"].coefficients,
                                                  100.0, 10.0)
  assert lines[-1] == f"optimal sparsity: {expected:.3f}"
  assert lines[-1] == "optimal sparsity: 0.631"
  assert "billions of training examples" in lines[0]


def test_table_rises_with_data(capsys):
  assert cli.run(["table", "--setting", "t5", "--nonzero_params", "10", "100", "--data", "0.1",
                  "10", "1000"]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ") and "\\" not in l]
  values = np.array([[float(x) for x in r.strip("| ").split(" | ")[1:]] for r in rows])
  assert values.shape == (3, 2) and np.all(np.diff(values, axis=0) > 0)


def test_plot_writes_a_png(tmp_path, capsys):
  out = tmp_path / "contour.png"
  assert cli.run(["plot", "--setting", "vit", "--out", str(out), "--points", "12"]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
  assert f"wrote {out}" in capsys.readouterr().out


def _synthetic_runs(path):
  truth = law_lib.paper_settings()["vit"].coefficients
  rows = ["sparsity,nonzero_params,data,loss"]
  for s in (0.0, 0.5, 0.75, 0.875):
    for n in (2.0, 8.0, 32.0):
      for d in (0.5, 1.0, 2.0, 8.0):
        rows.append(f"{s},{n * (1 - s)},{d},{truth.loss(s, n * (1 - s), d):.6f}")
  path.write_text("\n".join(rows) + "\n")


def test_fit_holdout_and_out_file(tmp_path, capsys):
  runs = tmp_path / "runs.csv"
  _synthetic_runs(runs)
  fit = tmp_path / "fit.json"
  assert cli.run(["fit", str(runs), "--holdout", "largest_data", "--starts", "6",
                  "--out", str(fit)]) == 0
  out = capsys.readouterr().out
  assert "runs: 48 (36 fitted, 12 held out: largest_data)" in out
  held = [l for l in out.splitlines() if l.startswith("held-out error")]
  assert held and float(held[0].split("rmse ")[1].split(",")[0]) < 0.01
  assert cli.run(["advise", "--setting", str(fit), "--nonzero_params", "8", "--data", "4"]) == 0
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith("optimal sparsity: 0.")


def test_holdout_by_column(tmp_path, capsys):
  runs = tmp_path / "runs.csv"
  _synthetic_runs(runs)
  assert cli.run(["fit", str(runs), "--holdout", "sparsity=0.875", "--starts", "3"]) == 0
  assert "runs: 48 (36 fitted, 12 held out: sparsity=0.875)" in capsys.readouterr().out
  assert cli.run(["fit", str(runs), "--holdout", "width=64"]) == 2
  assert "the runs have no column 'width'" in capsys.readouterr().err
  assert cli.run(["fit", str(runs), "--holdout", "sparsity=0.3"]) == 2
  assert "no run has sparsity = 0.3" in capsys.readouterr().err


def test_malformed_runs_file_names_the_row(tmp_path, capsys):
  runs = tmp_path / "runs.csv"
  runs.write_text("sparsity,nonzero_params,data,loss\n0.5,1,1,0.9\n0.5,1,x,0.9\n")
  assert cli.run(["fit", str(runs)]) == 2
  assert capsys.readouterr().err.strip() == (
      f"palix sparsity fit: {runs}: line 3: data = 'x' is not a number")


def test_unknown_setting(capsys):
  assert cli.run(["advise", "--setting", "bert", "--nonzero_params", "1", "--data", "1"]) == 2
  assert "neither one of ['t5', 'vit'] nor a file" in capsys.readouterr().err


def test_nonpositive_point(capsys):
  assert cli.run(["advise", "--setting", "t5", "--nonzero_params", "0", "--data", "1"]) == 2
  assert "must be positive" in capsys.readouterr().err
