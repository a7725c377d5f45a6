"""Token ids <-> text with a palix SentencePiece model, without TensorFlow.

The one wrapper of the ``sentencepiece`` package that the evaluators, ``palix infer``, the
``Generator`` and serving use (big_vision's ``get_tokenizer(...).to_str(...)`` pattern). The data
layer tokenizes with ``seqio.SentencePieceVocabulary`` (TensorFlow ops) over the same ``.model``
file, so both agree on every id. Two rules live here and nowhere else:

* **End of an answer.** A decoded row ends at its first EOS (id 1) or padding id (0, what the
  decoders write after EOS): :func:`answer_ids` is what comes before it, :func:`ends_with_eos`
  whether EOS was emitted, :func:`is_truncated` whether the answer fills the row instead (it hit
  the length limit and may be cut short).
* **Ids past the model** (embedding tables are padded to round sizes, and a barely trained model
  may pick those ids) decode as ``<unk>``, as ``seqio.SentencePieceVocabulary.decode`` does.

The id layout (pad 0, EOS 1, unk 2, then location and reserved tokens) is documented in
``palix.tasks.vocabulary``, which trains such models.
"""

import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np
import sentencepiece

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def _row(tokens) -> List[int]:
  return [int(t) for t in np.asarray(tokens).reshape(-1).tolist()]


def answer_ids(tokens: Sequence[int], eos_id: int = EOS_ID) -> List[int]:
  """The ids of a decoded row before its first EOS or padding id."""
  ids = []
  for token in _row(tokens):
    if token in (eos_id, PAD_ID):
      break
    ids.append(token)
  return ids


def ends_with_eos(tokens: Sequence[int], eos_id: int = EOS_ID) -> bool:
  """Whether the row emitted EOS right after its answer (counted in the answer's score)."""
  row = _row(tokens)
  length = len(answer_ids(row, eos_id))
  return length < len(row) and row[length] == eos_id


def is_truncated(tokens: Sequence[int], eos_id: int = EOS_ID) -> bool:
  """Whether the answer fills the whole row: it hit the length limit and may be cut short."""
  row = _row(tokens)
  return len(answer_ids(row, eos_id)) == len(row)


class Tokenizer:
  """``encode(text)``, ``to_str(ids)``, ``pieces(ids)`` for one SentencePiece model file."""

  def __init__(self, model_path: str):
    self.model_path = model_path
    self._processor = sentencepiece.SentencePieceProcessor(model_file=model_path)

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  def piece_to_id(self, piece: str) -> int:
    return self._processor.piece_to_id(piece)

  def _known(self, ids: Sequence[int]) -> List[int]:
    size, unk = self._processor.get_piece_size(), self._processor.unk_id()
    return [int(i) if 0 <= int(i) < size else unk for i in ids]

  def encode(self, text: str) -> List[int]:
    """Token ids of ``text`` without EOS (what seqio's ``tokenize`` produces)."""
    return list(self._processor.encode(text))

  def to_str(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
    """Text of ``ids``; with ``stop_at_eos`` only of the answer (:func:`answer_ids`)."""
    return self._processor.decode(self._known(answer_ids(ids) if stop_at_eos else _row(ids)))

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

  def target_tokens(self, text: str, length: int) -> Tuple[np.ndarray, bool]:
    """``text`` + EOS, zero-padded to ``length`` (as the feature converter writes targets); also
    whether it had to be cut to fit (the last kept id is then EOS)."""
    ids = self.encode(text) + [EOS_ID]
    cut = len(ids) > length
    if cut:
      ids = ids[:length - 1] + [EOS_ID]
    out = np.zeros((length,), np.int32)
    out[:len(ids)] = ids
    return out, cut


@functools.lru_cache(maxsize=8)
def get_tokenizer(model_path: Optional[str] = None) -> Tokenizer:
  """A cached :class:`Tokenizer` per model file (default: the committed palix vocabulary,
  ``tasks/assets/palix_sp.model``)."""
  if model_path is None:
    from palix.tasks import vocabulary  # pylint: disable=g-import-not-at-top  # no TF at import
    model_path = vocabulary.DEFAULT_MODEL
  return Tokenizer(model_path)
