"""The palix SentencePiece vocabulary: T5 id layout plus location and reserved tokens.

Id layout (fixed by the order of ``user_defined_symbols`` at training time, checked on load):

=================  ================================================================
id                 piece
=================  ================================================================
0                  ``<pad>`` (seqio pads with 0; also the decoder BOS)
1                  ``</s>`` (EOS)
2                  ``<unk>``
3 .. 1026          ``<loc0000>`` .. ``<loc1023>`` (one id each; see ``palix.loc_tokens``)
1027               ``<sep>`` (reserved: separates prompt parts, e.g. few-shot examples)
1028 .. 1043       ``<extra_0>`` .. ``<extra_15>`` (reserved for future special tokens)
1044 .. 1299       ``<0x00>`` .. ``<0xFF>`` byte fallback (any UTF-8 text encodes)
1300 ..            learned pieces (BPE by default: whole words on small corpora)
=================  ================================================================

There is no BOS id (-1); the feature converter shifts targets right with 0, as T5 does. Ids to
text without TensorFlow (and the end-of-answer and unknown-id rules): ``palix.tokenizer``.
"""

import io
import logging
import os
from typing import Iterable, List, Optional

import sentencepiece as spm

from palix import loc_tokens
from palix.tokenizer import EOS_ID, PAD_ID, UNK_ID

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "assets", "palix_sp.model")
SEPARATOR_TOKEN = "<sep>"
NUM_RESERVED_EXTRAS = 16


def special_tokens() -> List[str]:
  """User-defined symbols in id order (they get ids 3, 4, ...)."""
  return (loc_tokens.all_loc_tokens() + [SEPARATOR_TOKEN]
          + [f"<extra_{i}>" for i in range(NUM_RESERVED_EXTRAS)])


FIRST_SPECIAL_ID = 3
FIRST_LOC_ID = FIRST_SPECIAL_ID
SEPARATOR_ID = FIRST_LOC_ID + loc_tokens.NUM_BINS
FIRST_BYTE_ID = SEPARATOR_ID + 1 + NUM_RESERVED_EXTRAS


def train_sentencepiece(sentences: Iterable[str], output: str, vocab_size: int,
                        model_type: str = "bpe", num_threads: int = 2) -> int:
  """Trains a T5-layout model with the palix special tokens; returns its number of pieces.

  ``vocab_size`` is an upper bound (``hard_vocab_limit=False``): a small corpus yields fewer
  pieces instead of failing. Byte fallback keeps every UTF-8 string encodable without ``<unk>``.
  Training is deterministic: the same lines give a byte-identical model.
  """
  sentences = [s for s in sentences if s.strip()]
  if not sentences:
    raise ValueError("no text to train the SentencePiece model on")
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size,
      model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      user_defined_symbols=special_tokens(), byte_fallback=True, character_coverage=1.0,
      hard_vocab_limit=False, num_threads=num_threads, minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "wb") as f:
    f.write(proto.getvalue())
  processor = spm.SentencePieceProcessor(model_proto=proto.getvalue())
  check_layout(processor, output)
  logging.info("wrote %s (%d pieces, %d bytes)", output, processor.get_piece_size(),
               len(proto.getvalue()))
  return processor.get_piece_size()


def check_layout(processor: spm.SentencePieceProcessor, path: str) -> None:
  """Raises if the model does not have the palix id layout (e.g. a foreign model file)."""
  expected = {PAD_ID: "<pad>", EOS_ID: "</s>", UNK_ID: "<unk>"}
  for i, token in enumerate(special_tokens()):
    expected[FIRST_SPECIAL_ID + i] = token
  if processor.get_piece_size() <= max(expected):
    raise ValueError(f"{path}: {processor.get_piece_size()} pieces; a palix vocabulary has more "
                     f"than {max(expected)} (train one with `palix vocab train`)")
  for i, piece in expected.items():
    if processor.id_to_piece(i) != piece:
      raise ValueError(f"{path}: id {i} is {processor.id_to_piece(i)!r}, expected {piece!r} "
                       "(not a palix vocabulary; train one with `palix vocab train`)")


_VOCABS = {}


def get_vocabulary(path: Optional[str] = None):
  """A ``seqio.SentencePieceVocabulary`` for ``path`` (default: the committed model), cached."""
  import seqio  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path or DEFAULT_MODEL)
  if path not in _VOCABS:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: SentencePiece model not found (create it with `palix vocab "
                              "train --output=...`)")
    with open(path, "rb") as f:
      check_layout(spm.SentencePieceProcessor(model_proto=f.read()), path)
    _VOCABS[path] = seqio.SentencePieceVocabulary(path)
  return _VOCABS[path]
