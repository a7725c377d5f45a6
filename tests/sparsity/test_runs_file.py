"""Runs files for ``palix sparsity fit``: CSV and JSON, and errors that name the row."""

import json

import pytest

from palix.sparsity import runs_file

HEADER = "sparsity,nonzero_params,data,loss,seed\n"


def test_csv_and_json(tmp_path):
  csv_path = tmp_path / "runs.csv"
  csv_path.write_text(HEADER + "0.5,1.5,2,0.7,0\n0,3,2,0.6,1\n")
  rows = runs_file.read_runs(str(csv_path))
  assert [r["sparsity"] for r in rows] == [0.5, 0.0] and rows[1]["seed"] == "1"
  json_path = tmp_path / "runs.json"
  json_path.write_text(json.dumps({"runs": [{"sparsity": 0.5, "nonzero_params": 1.5, "data": 2,
                                             "loss": 0.7}]}))
  s, n, d, loss = runs_file.columns(runs_file.read_runs(str(json_path)))
  assert (s[0], n[0], d[0], loss[0]) == (0.5, 1.5, 2.0, 0.7)


@pytest.mark.parametrize("body, message", [
    ("0.5,1.5,2,0.7,0\n1.0,1,1,1,0\n", r"runs.csv: line 3: sparsity = '1.0' is outside \[0, 1\)"),
    ("0.5,1.5,2,abc,0\n", "line 2: loss = 'abc' is not a number"),
    ("0.5,1.5,,0.7,0\n", "line 2: missing data"),
    ("0.5,-1,2,0.7,0\n", "line 2: nonzero_params = '-1' must be positive"),
    ("0.5,1,2,0.7,0,9\n", "line 2: more fields than the header's 5"),
    ("", "no runs"),
])
def test_malformed_csv_names_the_row(tmp_path, body, message):
  path = tmp_path / "runs.csv"
  path.write_text(HEADER + body)
  with pytest.raises(ValueError, match=message):
    runs_file.read_runs(str(path))


def test_missing_column_and_bad_json(tmp_path):
  path = tmp_path / "runs.csv"
  path.write_text("sparsity,N,data,loss\n0,1,1,1\n")
  with pytest.raises(ValueError, match=r"lacks the columns \['nonzero_params'\]"):
    runs_file.read_runs(str(path))
  path = tmp_path / "runs.json"
  path.write_text('[{"sparsity": 0.5, "nonzero_params": 1, "data": 1, "loss": 1}, {"sparsity": 2}]')
  with pytest.raises(ValueError, match=r"run 1 \(0-based\): missing nonzero_params, data, loss"):
    runs_file.read_runs(str(path))
