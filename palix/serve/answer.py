"""An answer being decoded, one token at a time: its text so far, its end, and its boxes.

The end-of-answer rules are :mod:`palix.tokenizer`'s (the Generator's, so a streamed answer equals
the same request decoded alone): the answer is what comes before the first EOS or padding id, and
it is ``truncated`` when it fills all ``max_new_tokens`` steps instead. Detection answers
(``<loc....>`` x 4 then a label, objects separated by `` ; ``) are parsed into boxes by
:func:`palix.loc_tokens.parse_detections`.
"""

from typing import Callable, List, Optional, Sequence

from palix import loc_tokens
from palix import tokenizer


class Answer:
  """Per-request decoding state; ``detokenize`` maps answer ids to text (the Generator's)."""

  def __init__(self, detokenize: Callable[[Sequence[int]], str], eos_id: int,
               max_new_tokens: int):
    self._detokenize = detokenize
    self._eos_id = eos_id
    self.max_new_tokens = max_new_tokens
    self.row: List[int] = []  # every decoded token, as the decoder wrote them
    self.tokens: List[int] = []  # the answer: the row before its first EOS or padding id
    self.text = ""

  @property
  def finished(self) -> bool:
    return len(self.tokens) < len(self.row) or len(self.row) >= self.max_new_tokens

  @property
  def truncated(self) -> bool:
    """Stopped by ``max_new_tokens`` before EOS: the answer may be cut short."""
    return len(self.row) >= self.max_new_tokens and tokenizer.is_truncated(self.row,
                                                                           self._eos_id)

  def add(self, token: int) -> Optional[str]:
    """Adds the next decoded token. Returns the text it adds to the answer (``""`` for a piece
    that adds no text yet), or None if the token ended the answer (EOS or padding)."""
    if self.finished:
      raise ValueError("add() after the answer finished")
    self.row.append(int(token))
    tokens = tokenizer.answer_ids(self.row, self._eos_id)
    if len(tokens) == len(self.tokens):
      return None
    self.tokens = tokens
    previous, self.text = self.text, self._detokenize(tokens)
    # SentencePiece text grows at the end; if a piece rewrites earlier text (a byte sequence
    # completing a character) the client still gets the whole text in the token event.
    return self.text[len(previous):] if self.text.startswith(previous) else self.text

  def result(self) -> dict:
    """The JSON answer: text, tokens, truncated, and the boxes parsed from the text
    (normalised ``ymin, xmin, ymax, xmax`` in [0, 1] of the query image)."""
    boxes = [{"label": d.label, "ymin": d.box[0], "xmin": d.box[1], "ymax": d.box[2],
              "xmax": d.box[3]} for d in loc_tokens.parse_detections(self.text)]
    return {"text": self.text, "tokens": list(self.tokens), "truncated": self.truncated,
            "boxes": boxes}
