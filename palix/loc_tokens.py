"""Boxes as location tokens: ``<loc0000>`` .. ``<loc1023>``, PaliGemma's detection format.

A box is ``(ymin, xmin, ymax, xmax)`` normalised to [0, 1] (divide pixel coordinates by the image
height/width). Each coordinate is quantised to ``round(c * (NUM_BINS - 1))`` and written as one
token; a detection target is ``<ymin><xmin><ymax><xmax> label`` per object, objects separated by
`` ; ``. Decoding maps bin ``k`` back to ``k / (NUM_BINS - 1)``, so a round trip moves a coordinate
by at most half a bin.

This module is pure Python/numpy (no TensorFlow): the data layer writes targets with it and the
evaluator parses generations with it.
"""

import re
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

NUM_BINS = 1024
SEPARATOR = " ; "
_LOC = re.compile(r"<loc(\d{4})>")
_BOX = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>")


def loc_token(index: int) -> str:
  return f"<loc{index:04d}>"


def all_loc_tokens(num_bins: int = NUM_BINS) -> List[str]:
  return [loc_token(i) for i in range(num_bins)]


def quantize(coords, num_bins: int = NUM_BINS) -> np.ndarray:
  coords = np.asarray(coords, np.float64)
  if np.any(coords < 0) or np.any(coords > 1) or not np.all(np.isfinite(coords)):
    raise ValueError(f"box coordinates must be normalised to [0, 1]; got {coords.tolist()}")
  return np.round(coords * (num_bins - 1)).astype(np.int64)


def dequantize(bins, num_bins: int = NUM_BINS) -> np.ndarray:
  return np.asarray(bins, np.float64) / (num_bins - 1)


def box_to_text(box: Sequence[float], num_bins: int = NUM_BINS) -> str:
  """``(ymin, xmin, ymax, xmax)`` in [0, 1] -> ``'<loc....><loc....><loc....><loc....>'``."""
  box = np.asarray(box, np.float64)
  if box.shape != (4,):
    raise ValueError(f"a box needs 4 coordinates (ymin, xmin, ymax, xmax); got {box.tolist()}")
  if box[0] > box[2] or box[1] > box[3]:
    raise ValueError(f"box {box.tolist()} has ymin > ymax or xmin > xmax")
  return "".join(loc_token(int(b)) for b in quantize(box, num_bins))


def detection_target(boxes: Sequence[Sequence[float]], labels: Sequence[str],
                     num_bins: int = NUM_BINS) -> str:
  """Objects as ``<ymin><xmin><ymax><xmax> label`` joined by `` ; ``."""
  if len(boxes) != len(labels):
    raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
  return SEPARATOR.join(f"{box_to_text(b, num_bins)} {label}" for b, label in zip(boxes, labels))


def detection_prompt(labels: Sequence[str]) -> str:
  """``detect a ; b`` (each class named once, in the order given)."""
  return "detect " + SEPARATOR.join(dict.fromkeys(labels))


class Detection(NamedTuple):
  box: Tuple[float, float, float, float]  # normalised (ymin, xmin, ymax, xmax)
  label: str


def parse_detections(text: str, num_bins: int = NUM_BINS) -> List[Detection]:
  """Parse generated text into detections, skipping malformed pieces instead of failing.

  A piece counts only if it starts with four location tokens followed by a non-empty label; pieces
  with fewer tokens, an inverted box (min > max) or a bin outside ``num_bins`` are ignored. Labels
  are returned as written (the caller decides what to do with an unknown class).
  """
  detections = []
  for piece in text.split(";"):
    match = _BOX.search(piece)
    if match is None:
      continue
    bins = [int(g) for g in match.groups()]
    label = _LOC.sub("", piece[match.end():]).strip()
    if not label or max(bins) >= num_bins or bins[0] > bins[2] or bins[1] > bins[3]:
      continue
    detections.append(Detection(tuple(float(c) for c in dequantize(bins, num_bins)), label))
  return detections
