"""The SentencePiece vocabulary: T5 id layout, one id per location token, box round trips."""

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from palix import loc_tokens
from palix.tasks import vocabulary


def test_committed_model_has_the_palix_id_layout(vocab):
  processor = spm.SentencePieceProcessor(model_file=vocabulary.DEFAULT_MODEL)
  assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == \
      (0, 1, 2, -1)
  assert processor.id_to_piece(3) == "<loc0000>"
  assert processor.id_to_piece(1026) == "<loc1023>"
  assert vocabulary.SEPARATOR_ID == 1027
  assert processor.id_to_piece(vocabulary.SEPARATOR_ID) == "<sep>"
  assert processor.id_to_piece(1028) == "<extra_0>" and processor.id_to_piece(1043) == "<extra_15>"
  assert processor.id_to_piece(vocabulary.FIRST_BYTE_ID) == "<0x00>"
  assert vocab.vocab_size == processor.get_piece_size()
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)


def test_every_loc_token_is_one_id_and_decodes_back(vocab):
  for k in range(loc_tokens.NUM_BINS):
    token = loc_tokens.loc_token(k)
    ids = [i for i in vocab.encode(token) if vocab.decode([i]).strip()]
    assert ids == [vocabulary.FIRST_LOC_ID + k], token
  joined = "".join(loc_tokens.all_loc_tokens())
  assert vocab.decode(vocab.encode(joined)) == joined


def test_detection_target_round_trips_through_tokenizer_within_one_bin(vocab):
  rng = np.random.default_rng(0)
  corners = rng.uniform(0, 1, size=(300, 2, 2))  # two (y, x) points per box
  boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)  # ymin, xmin, ymax, xmax
  boxes[0], boxes[1] = (0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5)  # edges and a degenerate box
  labels = ["circle", "ankle boot", "t-shirt"] * 100
  for start in range(0, 300, 4):
    chunk, names = boxes[start:start + 4], labels[start:start + 4]
    target = loc_tokens.detection_target(chunk, names)
    ids = vocab.encode(target)
    # four loc ids per object, each a single token in the loc range
    num_loc = sum(vocabulary.FIRST_LOC_ID <= i < vocabulary.SEPARATOR_ID for i in ids)
    assert num_loc == 4 * len(chunk)
    decoded = vocab.decode(ids)
    assert decoded == target
    found = loc_tokens.parse_detections(decoded)
    assert [d.label for d in found] == names
    got = np.array([d.box for d in found])
    assert np.abs(got - chunk).max() <= 0.5 / (loc_tokens.NUM_BINS - 1) + 1e-12


def test_tf_tokenizer_matches_python_and_handles_any_text(vocab):
  texts = ["answer en what color is the shape?", "<loc0001><loc1023> ankle boot ; <loc0500>",
           "Zürich café 東京 🙂"]
  for text in texts:
    python_ids = vocab.encode(text)
    tf_ids = vocab.encode_tf(tf.constant(text)).numpy().tolist()
    assert python_ids == tf_ids
    assert vocabulary.UNK_ID not in python_ids  # byte fallback
    assert vocab.decode(python_ids) == text


def test_common_words_are_single_pieces(vocab):
  for word in ["answer", "caption", "detect", "circle", "trouser", "which"]:
    assert len(vocab.encode(word)) == 1, word


def test_training_is_deterministic_and_keeps_layout(tmp_path):
  lines = ["caption en", "a photo of a trouser", "answer en what color is the shape?",
           "detect circle ; bag", "<loc0001><loc0002><loc0003><loc0004> circle"] * 3
  first, second = tmp_path / "a.model", tmp_path / "b.model"
  size = vocabulary.train_sentencepiece(lines, str(first), vocab_size=1400)
  vocabulary.train_sentencepiece(lines, str(second), vocab_size=1400)
  assert first.read_bytes() == second.read_bytes()
  assert size > vocabulary.FIRST_BYTE_ID + 256
  loaded = vocabulary.get_vocabulary(str(first))
  assert loaded.encode("<loc0007>")[-1] == vocabulary.FIRST_LOC_ID + 7


def test_foreign_model_is_rejected(tmp_path):
  path = tmp_path / "plain.model"
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g"] * 10),
                                 model_prefix=str(tmp_path / "plain"), vocab_size=20,
                                 minloglevel=2, hard_vocab_limit=False)
  with pytest.raises(ValueError, match="palix vocabulary"):
    vocabulary.get_vocabulary(str(path))
  with pytest.raises(FileNotFoundError, match="palix vocab train"):
    vocabulary.get_vocabulary(str(tmp_path / "missing.model"))
