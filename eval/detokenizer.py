"""Token ids <-> text with the task's SentencePiece model, in plain Python (no TensorFlow).

The data layer tokenizes with ``seqio.SentencePieceVocabulary`` (TensorFlow ops); the evaluator
reads the same ``.model`` file with the ``sentencepiece`` package, so both agree on every id.
"""

import functools
from typing import List, Sequence, Tuple

import numpy as np
import sentencepiece

PAD_ID, EOS_ID = 0, 1


def generated_ids(tokens: Sequence[int], eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> List[int]:
  """A decoded row cut at the first EOS or padding id (decoders write 0 after EOS)."""
  ids = []
  for token in np.asarray(tokens).reshape(-1).tolist():
    if token in (eos_id, pad_id):
      break
    ids.append(int(token))
  return ids


class Detokenizer:
  """``text(ids)``, ``pieces(ids)`` and ``encode(text)`` for one SentencePiece model file.

  A model's embedding is often larger than the vocabulary (T5 pads it to 32128); ids past the
  last piece decode as ``<unk>``, as ``seqio.SentencePieceVocabulary.decode`` does.
  """

  def __init__(self, model_path: str):
    self.model_path = model_path
    self._processor = sentencepiece.SentencePieceProcessor(model_file=model_path)

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  def _known(self, ids: Sequence[int]) -> List[int]:
    size, unk = self._processor.get_piece_size(), self._processor.unk_id()
    return [int(i) if 0 <= int(i) < size else unk for i in ids]

  def text(self, ids: Sequence[int]) -> str:
    return self._processor.decode(self._known(ids))

  def pieces(self, ids: Sequence[int]) -> List[str]:
    """Each id as its SentencePiece piece (``"<loc0012>"``, ``"▁cat"``), for token-level parsing.

    Byte-fallback pieces (``<0x51>``) are replaced by the text they encode: a run of them is
    decoded as UTF-8 and its text given to the run's first id (the others get ``""``), so the
    pieces always concatenate to the decoded text (with ``▁`` for spaces).
    """
    known = self._known(ids)
    pieces = [self._processor.id_to_piece(i) for i in known]
    out, k = [], 0
    while k < len(known):
      if not self._processor.is_byte(known[k]):
        out.append(pieces[k])
        k += 1
        continue
      end = k
      while end < len(known) and self._processor.is_byte(known[end]):
        end += 1
      text = bytes(int(p[3:-1], 16) for p in pieces[k:end]).decode("utf-8", errors="replace")
      out.extend([text] + [""] * (end - k - 1))
      k = end
    return out

  def encode(self, text: str) -> List[int]:
    """Token ids of ``text`` without EOS (what seqio's ``tokenize`` produces)."""
    return list(self._processor.encode(text))

  def target_tokens(self, text: str, length: int) -> Tuple[np.ndarray, bool]:
    """``text`` + EOS, zero-padded to ``length``; also whether it had to be cut to fit."""
    ids = self.encode(text) + [EOS_ID]
    cut = len(ids) > length
    if cut:
      ids = ids[:length - 1] + [EOS_ID]
    out = np.zeros((length,), np.int32)
    out[:len(ids)] = ids
    return out, cut


@functools.lru_cache(maxsize=8)
def get_detokenizer(model_path: str) -> Detokenizer:
  """A cached :class:`Detokenizer` per model file."""
  return Detokenizer(model_path)
