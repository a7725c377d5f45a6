"""The load test (``python -m palix.eval.perf.serve_load``) runs, checks every answer and writes its
figures: a smoke run with the tiny model (slow: it compiles two servers)."""

import json

import pytest

from palix.eval.perf import serve_load


@pytest.mark.slow
def test_a_small_load_run_has_no_lost_duplicated_or_mixed_up_answers(tmp_path):
  output = tmp_path / "serve_load.json"
  assert serve_load.run(["--tiny", "--requests", "6", "--clients", "3", "--repeats", "1",
                         "--output", str(output)]) == 0
  figures = json.loads(output.read_text())
  assert figures["failures"] == 0 and figures["distinct_answers"] >= 4
  assert sorted(r["mode"] for r in figures["runs"]) == ["batched", "unbatched"]
  for run in figures["runs"]:
    assert run["lost"] == run["duplicated"] == run["mixed_up"] == run["wrong"] == 0
    assert run["requests"] == 6 and 0 < run["p50_ms"] <= run["p99_ms"]
  assert [r["mean_requests_per_decode"] for r in figures["runs"]
          if r["mode"] == "unbatched"] == [1.0]


def test_the_checks_catch_a_mixed_up_answer():
  """The bookkeeping that would report a mixed-up response: swap two answers and count."""
  expected = [type("E", (), {"tokens": (i,), "text": f"answer {i}"})() for i in range(3)]
  answers = [{"tokens": [1], "text": "answer 1", "batch_size": 2},
             {"tokens": [0], "text": "answer 0", "batch_size": 2},
             {"tokens": [2], "text": "answer 2", "batch_size": 1}]
  counts = serve_load.check_answers([(0.1, a, None) for a in answers], expected)
  assert counts["mixed_up"] == 2 and counts["wrong"] == counts["lost"] == 0
  counts = serve_load.check_answers([(0.1, None, "OSError: refused"), (0.1, answers[0], None),
                                     (0.1, None, "stream events disagree with the answer")],
                                    expected)
  assert (counts["lost"], counts["duplicated"], counts["mixed_up"], counts["wrong"]) == (1, 1, 0, 0)
  wrong = dict(answers[2], tokens=[7], text="answer 7")
  assert serve_load.check_answers([(0.1, wrong, None)], expected[2:])["wrong"] == 1
