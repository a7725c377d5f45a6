"""Token-level detection parsing: per-box scores, agreement with the text parser, robustness."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from palix import loc_tokens
from palix.eval.metrics import (ScoredDetection, coco_detection_map, parse_scored_detections,
                                parse_scored_detections_from_ids)


def test_scores_are_sums_of_the_box_tokens():
  pieces = ["<loc0100>", "<loc0200>", "<loc0300>", "<loc0400>", "\u2581cat", "\u2581;",
            "\u2581", "<loc0010>", "<loc0020>", "<loc0030>", "<loc0040>", "\u2581hot", "\u2581dog"]
  logprobs = [-0.1, -0.2, -0.3, -0.4, -0.5, -7.0, -8.0, -1.0, -1.0, -1.0, -1.0, -0.25, -0.75]
  detections = parse_scored_detections(pieces, logprobs)
  # box 1: its 4 locations + 'cat' = -1.5; the separator '▁;' and the lone '▁' belong to no box;
  # box 2: 4 locations + 'hot' + 'dog' = -5.0
  assert [d.label for d in detections] == ["cat", "hot dog"]
  assert [d.score for d in detections] == pytest.approx([-1.5, -5.0])
  assert detections[0].box == pytest.approx((100 / 1023, 200 / 1023, 300 / 1023, 400 / 1023))


def test_a_token_straddling_two_objects_counts_for_both():
  pieces = ["<loc0001><loc0002><loc0003><loc0004>", " a ;<loc0001>", "<loc0002><loc0003>",
            "<loc0004> b"]
  detections = parse_scored_detections(pieces, [-1.0, -2.0, -4.0, -8.0])
  assert [(d.label, d.score) for d in detections] == [("a", -3.0), ("b", -14.0)]


def test_from_ids_stops_at_eos():
  vocab = {2: "<loc0000>", 3: "<loc0512>", 4: "<loc1023>", 5: "\u2581cat", 6: "\u2581;"}
  ids = [2, 2, 4, 4, 5, 6, 3, 3, 4, 4, 5, 1, 2, 2, 4, 4, 5, 0, 0]
  logprobs = [-1.0] * 11 + [-0.5] + [-100.0] * 7
  detections = parse_scored_detections_from_ids(ids, logprobs, vocab.__getitem__)
  assert [(d.box, d.label, d.score) for d in detections] == [
      ((0.0, 0.0, 1.0, 1.0), "cat", -5.0), ((512 / 1023, 512 / 1023, 1.0, 1.0), "cat", -5.0)]


@pytest.mark.parametrize("text,expected,reason", [
    ("", [], "empty generation"),
    ("garbage words only", [], "no location tokens"),
    ("<loc0001><loc0002><loc0003> cat", [], "three location tokens"),
    ("cat <loc0001><loc0002><loc0003><loc0004>", [], "label before the box: nothing after it"),
    ("<loc0500><loc0002><loc0003><loc0004> cat", [], "inverted box (ymin > ymax)"),
    ("<loc0001><loc0002><loc0003><loc0004>", [], "missing label"),
    ("<loc0001><loc0002><loc0003><loc0004> zebra", ["zebra"], "unknown label is kept here"),
    ("<loc0001><loc0002><loc0003><loc0004> cat ; <loc00", ["cat"], "truncated second object"),
    (";;; <loc0001><loc0002><loc0003><loc0004> cat ;", ["cat"], "stray separators"),
])
def test_malformed_generations(text, expected, reason):
  pieces = list(text)  # one character per "token": the worst alignment case
  detections = parse_scored_detections(pieces, [-1.0] * len(pieces))
  assert [d.label for d in detections] == expected, reason
  for d in detections:  # each character is a token of -1: 4 x 9 location characters, ' ', label
    assert d.score == -(36 + 1 + len(d.label))


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match="2 token pieces but 1 log-probabilities"):
    parse_scored_detections(["a", "b"], [-1.0])
  with pytest.raises(ValueError, match="2 token ids but 3 log-probabilities"):
    parse_scored_detections_from_ids([1, 2], [0.0, 0.0, 0.0], str)


_PIECES = st.one_of(
    st.integers(0, 1100).map(lambda i: f"<loc{i:04d}>"),
    st.sampled_from(["\u2581cat", "\u2581dog", "\u2581;", ";", " ", "\u2581", "hot", "<loc", "12>",
                     "<loc0001><loc0002>", " ; <loc0003>", "", "\u2581<", ">"]),
    st.text(max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=30), st.data())
def test_fuzz_token_parser_agrees_with_text_parser(pieces, data):
  logprobs = data.draw(st.lists(st.floats(-20, 0), min_size=len(pieces), max_size=len(pieces)))
  detections = parse_scored_detections(pieces, logprobs)
  text = "".join(p.replace("\u2581", " ") for p in pieces)
  assert [(d.box, d.label) for d in detections] == \
      [(d.box, d.label) for d in loc_tokens.parse_detections(text)]
  for d in detections:
    assert math.fsum(logprobs) - 1e-9 <= d.score <= 1e-12  # a partial sum of non-positive terms
    assert all(0 <= c <= 1 for c in d.box) and d.box[0] <= d.box[2] and d.box[1] <= d.box[3]


@pytest.mark.filterwarnings("ignore:.*without scores")
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(
    ["<loc0001>", "<loc0900>", "<loc1023>", "<loc9999>", " cat", " dog", " ;", ";", "x", "<", " "]),
    max_size=12).map("".join), min_size=1, max_size=3))
def test_fuzz_text_predictions_through_map(texts):
  targets = [{"boxes": [(0.0, 0.0, 0.5, 0.5)], "labels": ["cat"], "image_size": (64, 48)}
             for _ in texts]
  metrics = coco_detection_map(targets, texts, label_names=["cat", "dog"])
  assert 0 <= metrics["mAP"] <= 1 and metrics["num_gt_boxes"] == len(texts)


def test_scored_detection_is_a_plain_tuple():
  d = ScoredDetection((0.0, 0.0, 1.0, 1.0), "cat", -1.0)
  assert d.box == (0.0, 0.0, 1.0, 1.0) and tuple(d) == ((0.0, 0.0, 1.0, 1.0), "cat", -1.0)
