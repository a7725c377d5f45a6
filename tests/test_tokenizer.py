"""``palix.tokenizer``: the one SentencePiece wrapper, its end-of-answer and unknown-id rules."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palix import tokenizer as tokenizer_lib
from palix.eval.metrics.detection_parsing import SENTENCEPIECE_SPACE

MODEL = os.path.join(os.path.dirname(__file__), "..", "tasks", "assets", "palix_sp.model")


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.Tokenizer(MODEL)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list("ab cQ-;é☃<>0") + ["<loc0012>", " bag"]), max_size=20))
def test_pieces_concatenate_to_the_decoded_text(parts):
  text = "".join(parts)
  tokenizer = tokenizer_lib.get_tokenizer(MODEL)
  ids = tokenizer.encode(text)
  joined = "".join(tokenizer.pieces(ids)).replace(SENTENCEPIECE_SPACE, " ")
  assert joined.lstrip(" ") == tokenizer.to_str(ids).lstrip(" ")


def test_byte_fallback_pieces_become_their_characters(tokenizer):
  ids = tokenizer.encode("☃")
  assert len(ids) >= 3  # three UTF-8 bytes, none of them a learned piece
  pieces = [p for p in tokenizer.pieces(ids) if p]
  assert "".join(pieces).replace(SENTENCEPIECE_SPACE, " ").strip() == "☃"


def test_ids_outside_the_vocabulary_decode_as_unk(tokenizer):
  far = tokenizer.vocab_size + 100
  assert tokenizer.pieces([far, 3]) == ["<unk>", "<loc0000>"]
  assert tokenizer.to_str([far]) == tokenizer.to_str([tokenizer_lib.UNK_ID])
  ids = tokenizer.encode("a red circle")
  assert tokenizer.to_str(ids + [far] + ids) == tokenizer.to_str(
      ids + [tokenizer_lib.UNK_ID] + ids)


def test_an_answer_ends_at_eos_or_padding():
  assert tokenizer_lib.answer_ids([5, 6, 1, 7, 0]) == [5, 6]
  assert tokenizer_lib.answer_ids([5, 0, 6, 1]) == [5]
  assert tokenizer_lib.answer_ids(np.array([5, 6, 7])) == [5, 6, 7]
  assert tokenizer_lib.answer_ids([5, 6, 9, 1], eos_id=9) == [5, 6]
  # EOS emitted / the row full without it / padding only after the answer.
  cases = {(5, 6, 1, 0): (True, False), (5, 6, 7): (False, True), (5, 0, 0): (False, False),
           (1, 0, 0): (True, False), (5, 6, 7, 1): (True, False)}
  for row, (ended, cut) in cases.items():
    assert tokenizer_lib.ends_with_eos(row) == ended, row
    assert tokenizer_lib.is_truncated(row) == cut, row


def test_to_str_stops_at_eos(tokenizer):
  ids = tokenizer.encode("a red circle")
  assert tokenizer.to_str(ids + [1] + ids) == "a red circle"
  assert tokenizer.to_str(ids + [0, 0]) == "a red circle"
  assert tokenizer.to_str(ids + [1] + ids, stop_at_eos=False) == "a red circle a red circle"


def test_target_tokens_end_with_eos_and_report_cutting(tokenizer):
  tokens, cut = tokenizer.target_tokens("a photo of a trouser", 16)
  ids = tokenizer.encode("a photo of a trouser")
  assert not cut and tokens.tolist() == ids + [1] + [0] * (16 - len(ids) - 1)
  tokens, cut = tokenizer.target_tokens("a photo of a trouser", 3)
  assert cut and tokens.tolist() == ids[:2] + [1]


def test_the_default_is_the_data_layers_vocabulary():
  from palix.tasks import vocabulary  # pylint: disable=g-import-not-at-top
  default = tokenizer_lib.get_tokenizer()
  assert os.path.samefile(default.model_path, vocabulary.DEFAULT_MODEL)
  assert default.piece_to_id("<sep>") == vocabulary.SEPARATOR_ID
  assert (vocabulary.PAD_ID, vocabulary.EOS_ID) == (tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID)
