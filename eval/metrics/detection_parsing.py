"""Scored detections from decoded tokens: every box gets the log-probability of its own tokens.

A generative detector writes ``<ymin><xmin><ymax><xmax> label ; ...`` (see :mod:`palix.loc_tokens`)
and has no detection scores of its own. COCO AP ranks detections by score, so constant scores make
AP depend on the order of the output. Here a box's score is the **sum of the log-probabilities of
the tokens that wrote it**: its four location tokens and its label's tokens (not the separator).
The sum is the joint log-probability of that (box, label); AP ranks detections within one class,
whose label always takes the same tokens, so the sum's length bias does not enter. A token that
straddles the box (e.g. a piece ``" ;<loc0001>"``) counts for the box it overlaps.

Which pieces become detections is decided by :func:`palix.loc_tokens.parse_detections` on the
concatenated text, so the token-level and the text-level parsers always agree on boxes and labels.
"""

import bisect
import math
import re
from typing import Callable, List, NamedTuple, Sequence, Tuple

from palix import loc_tokens

SENTENCEPIECE_SPACE = "\u2581"  # SentencePiece writes a leading space as "▁"
_BOX = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>")
_LOC = re.compile(r"<loc(\d{4})>")


class ScoredDetection(NamedTuple):
  box: Tuple[float, float, float, float]  # normalised (ymin, xmin, ymax, xmax)
  label: str
  score: float  # sum of the log-probabilities of the box's tokens (<= 0)


def piece_text(piece: str) -> str:
  """Text of one decoded SentencePiece piece (``"▁cat"`` -> ``" cat"``)."""
  return piece.replace(SENTENCEPIECE_SPACE, " ")


def _object_spans(text: str, num_bins: int) -> List[Tuple[int, int]]:
  """Character spans (box start, label end) of the pieces that parse_detections accepts, in the
  same order and with the same acceptance rules."""
  spans, start = [], 0
  for piece in text.split(";"):
    match = _BOX.search(piece)
    if match is not None:
      bins = [int(g) for g in match.groups()]
      rest = piece[match.end():]
      label = _LOC.sub("", rest).strip()
      if label and max(bins) < num_bins and bins[0] <= bins[2] and bins[1] <= bins[3]:
        spans.append((start + match.start(), start + len(piece.rstrip())))
    start += len(piece) + 1
  return spans


def parse_scored_detections(pieces: Sequence[str], logprobs: Sequence[float],
                            num_bins: int = loc_tokens.NUM_BINS) -> List[ScoredDetection]:
  """Detections with scores from decoded token pieces and their log-probabilities.

  Args:
    pieces: the generated tokens, each decoded on its own (SentencePiece pieces such as
      ``"<loc0012>"`` or ``"▁cat"``), up to (not including) EOS.
    logprobs: the log-probability of each token, as the decoder returned it.
    num_bins: location bins (1024 in PaliGemma's format).

  Malformed generations never raise: pieces without four leading location tokens, with an inverted
  box, a bin out of range or an empty label are skipped exactly as
  :func:`palix.loc_tokens.parse_detections` skips them.
  """
  if len(pieces) != len(logprobs):
    raise ValueError(f"{len(pieces)} token pieces but {len(logprobs)} log-probabilities")
  texts = [piece_text(p) for p in pieces]
  token_starts, offset = [], 0
  for text in texts:
    token_starts.append(offset)
    offset += len(text)
  full_text = "".join(texts)
  parsed = loc_tokens.parse_detections(full_text, num_bins)
  spans = _object_spans(full_text, num_bins)
  if len(parsed) != len(spans):  # both follow the same rules; a mismatch is a bug here
    raise AssertionError(f"span finder disagrees with parse_detections on {full_text!r}")
  detections = []
  for detection, (begin, end) in zip(parsed, spans):
    first = bisect.bisect_right(token_starts, begin) - 1
    last = bisect.bisect_left(token_starts, end) - 1
    score = math.fsum(float(logprobs[i]) for i in range(first, last + 1))
    detections.append(ScoredDetection(detection.box, detection.label, score))
  return detections


def parse_scored_detections_from_ids(token_ids: Sequence[int], logprobs: Sequence[float],
                                     id_to_piece: Callable[[int], str], *, eos_id: int = 1,
                                     pad_id: int = 0,
                                     num_bins: int = loc_tokens.NUM_BINS) -> List[ScoredDetection]:
  """Like :func:`parse_scored_detections` for one decoded row of token ids.

  The row is cut at the first EOS or padding id (decoders pad after EOS); ``id_to_piece`` is e.g.
  ``sentencepiece_processor.id_to_piece``.
  """
  if len(token_ids) != len(logprobs):
    raise ValueError(f"{len(token_ids)} token ids but {len(logprobs)} log-probabilities")
  ids = [int(t) for t in token_ids]
  end = next((i for i, t in enumerate(ids) if t in (eos_id, pad_id)), len(ids))
  return parse_scored_detections([id_to_piece(t) for t in ids[:end]], list(logprobs[:end]),
                                 num_bins)
