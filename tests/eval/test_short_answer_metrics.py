"""ANLS, ChartQA relaxed accuracy and exact match: golden cases worked out by hand."""

import functools

import pytest
from hypothesis import given, settings, strategies as st

from palix.eval.metrics import (anls, anls_scores, exact_match, normalized_exact_match,
                                relaxed_accuracy, relaxed_accuracy_scores)
from palix.eval.metrics.anls import levenshtein, normalized_levenshtein_similarity
from palix.eval.metrics.relaxed_accuracy import relaxed_match


# ----------------------------------------------------------------------------------------- ANLS
@pytest.mark.parametrize("gold,prediction,expected,reason", [
    ("hello", "Hello", 1.0, "answers are not case sensitive"),
    ("hello world", "  hello   world ", 1.0, "strip + whitespace runs collapsed on both sides"),
    ("hello world", "helloworld", 10 / 11, "space sensitive: lev 1 / max len 11"),
    ("abcd", "abce", 0.75, "lev 1 / 4 = 0.25 -> 1 - 0.25"),
    ("kitten", "sitting", 4 / 7, "lev 3 / 7 = 0.43 < 0.5 -> 1 - 3/7"),
    ("a", "ab", 0.0, "lev 1 / 2 = 0.5 is not < 0.5 -> 0 (strict threshold)"),
    ("a", "", 0.0, "empty prediction: NL = 1"),
    ("", "", 1.0, "two empty strings are an exact match"),
])
def test_anls_golden(gold, prediction, expected, reason):
  assert normalized_levenshtein_similarity(gold, prediction) == pytest.approx(expected), reason


def test_anls_max_over_gold_and_mean():
  # q1: best of 'xyz' (lev 7/7 -> 0) and 'kitten' (4/7); q2: exact (1.0) -> mean (4/7 + 1) / 2
  targets = [["xyz", "kitten"], "Paris"]
  predictions = ["sitting", "paris"]
  assert anls_scores(targets, predictions) == pytest.approx([4 / 7, 1.0])
  assert anls(targets, predictions)["anls"] == pytest.approx((4 / 7 + 1) / 2)
  # a looser threshold keeps the 0.5 case: 1 - 0.5
  assert anls([["a"]], ["ab"], threshold=0.6)["anls"] == pytest.approx(0.5)


@functools.lru_cache(maxsize=None)
def _reference_levenshtein(a: str, b: str) -> int:
  """The textbook recursive definition (independent of the DP in anls.py)."""
  if not a or not b:
    return len(a) + len(b)
  return min(_reference_levenshtein(a[1:], b) + 1, _reference_levenshtein(a, b[1:]) + 1,
             _reference_levenshtein(a[1:], b[1:]) + (a[0] != b[0]))


@settings(max_examples=200, deadline=None)
@given(st.text("abc ", max_size=7), st.text("abc ", max_size=7))
def test_levenshtein_matches_recursive_definition(a, b):
  assert levenshtein(a, b) == _reference_levenshtein(a, b) == levenshtein(b, a)


# ------------------------------------------------------------------------- relaxed accuracy
@pytest.mark.parametrize("gold,prediction,correct,reason", [
    ("12", "12.5", True, "|12.5 - 12| / 12 = 0.042 <= 0.05"),
    ("12", "12.7", False, "0.7 / 12 = 0.058 > 0.05"),
    ("100", "105", True, "exactly 5% is accepted (<=)"),
    ("100", "95", True, "exactly 5% below"),
    ("-10", "-10.4", True, "relative to |gold|"),
    ("0.5", "50%", True, "a trailing % divides by 100"),
    ("50", "50%", False, "'50%' is 0.5, 100x off"),
    ("1,000", "1000", False, "no comma stripping: '1,000' is compared as a string"),
    ("0", "0.0", False, "gold 0 falls back to string comparison"),
    ("2019", "2000", True, "years are numbers: 19 / 2019 < 5% (known quirk)"),
    ("Yes", "yes", True, "strings compare case-insensitively"),
    (" yes", "yes", False, "strings are not stripped"),
])
def test_relaxed_golden(gold, prediction, correct, reason):
  assert relaxed_match(gold, prediction) is correct, reason


def test_relaxed_accuracy_split():
  targets = [["abc", "10"], "red", "12"]
  predictions = ["10.2", "blue", "12"]
  assert relaxed_accuracy_scores(targets, predictions) == [1.0, 0.0, 1.0]
  assert relaxed_accuracy(targets, predictions) == {"relaxed_accuracy": pytest.approx(2 / 3)}


# ------------------------------------------------------------------------------ exact match
def test_exact_match_variants():
  targets = ["cat", "cat", ["dog", "The Cat."], "apple", "a-b"]
  predictions = ["cat ", "Cat", "cat", "an apple", "ab"]
  # strict: 'cat ' strips to 'cat' (1); 'Cat' != 'cat' (0); 'cat' vs 'dog'/'The Cat.' (0);
  # 'an apple' != 'apple' (0); 'ab' != 'a-b' (0)
  assert exact_match(targets, predictions) == {"exact_match": pytest.approx(1 / 5)}
  # normalised: all five match ('The Cat.' -> 'cat', article dropped, '-' deleted)
  assert normalized_exact_match(targets, predictions) == {"normalized_exact_match": 1.0}


@pytest.mark.parametrize("metric", [anls, relaxed_accuracy, exact_match, normalized_exact_match])
def test_bad_inputs(metric):
  with pytest.raises(ValueError, match="1 targets but 2 predictions"):
    metric(["a"], ["a", "b"])
  with pytest.raises(ValueError, match="target 0 must be a string or a non-empty list"):
    metric([[]], ["a"])
  with pytest.raises(ValueError, match="prediction 0 must be a string"):
    metric(["a"], [None])
  with pytest.raises(ValueError, match="at least one question"):
    metric([], [])
