"""An answer being decoded, one token at a time: its text so far, its end, and its boxes.

The rules are :meth:`palix.generate.Generator.complete`'s, so a streamed answer equals the same
request decoded alone: the answer ends at EOS (not included), pad tokens (id 0) are dropped, and an
answer that reaches ``max_new_tokens`` without EOS is ``truncated``. Detection answers
(``<loc....>`` x 4 then a label, objects separated by `` ; ``) are parsed into boxes by
:func:`palix.loc_tokens.parse_detections`.
"""

from typing import Callable, List, Sequence

from palix import loc_tokens


class Answer:
  """Per-request decoding state; ``detokenize`` maps token ids to text (the Generator's)."""

  def __init__(self, detokenize: Callable[[Sequence[int]], str], eos_id: int,
               max_new_tokens: int):
    self._detokenize = detokenize
    self._eos_id = eos_id
    self.max_new_tokens = max_new_tokens
    self.tokens: List[int] = []
    self.text = ""
    self.steps = 0
    self.ended = False  # emitted EOS
    self.finished = False

  def add(self, token: int) -> str:
    """Adds the next decoded token; returns the new text (``""`` for EOS, pad or a piece that
    does not change the text yet)."""
    if self.finished:
      raise ValueError("add() after the answer finished")
    self.steps += 1
    if token == self._eos_id:
      self.ended = self.finished = True
      return ""
    self.finished = self.steps >= self.max_new_tokens
    if token == 0:
      return ""
    self.tokens.append(int(token))
    previous, self.text = self.text, self._detokenize(self.tokens)
    # SentencePiece text grows at the end; if a piece rewrites earlier text (a byte sequence
    # completing a character) the client gets the whole text again in the token event.
    return self.text[len(previous):] if self.text.startswith(previous) else self.text

  @property
  def truncated(self) -> bool:
    """Stopped by ``max_new_tokens`` before EOS."""
    return self.finished and not self.ended

  def result(self) -> dict:
    """The JSON answer: text, tokens, truncated, and the boxes parsed from the text
    (normalised ``ymin, xmin, ymax, xmax`` in [0, 1] of the query image)."""
    boxes = [{"label": d.label, "ymin": d.box[0], "xmin": d.box[1], "ymax": d.box[2],
              "xmax": d.box[3]} for d in loc_tokens.parse_detections(self.text)]
    return {"text": self.text, "tokens": list(self.tokens), "truncated": self.truncated,
            "boxes": boxes}
