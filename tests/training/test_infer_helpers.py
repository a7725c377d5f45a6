"""Inference helpers that need no model: padding rows, EOS cuts, detokenisation."""

import pathlib

import numpy as np
import sentencepiece

from palix.training import infer

SP_MODEL = pathlib.Path(__file__).resolve().parents[2] / "tasks" / "assets" / "palix_sp.model"


def test_short_and_zero_padded_batches_report_their_real_rows():
  real = {"image_mask": np.ones((3, 1), np.int32),
          "encoder_input_tokens": np.array([[5, 1], [6, 1], [7, 1]], np.int32)}
  (batch, rows), = list(infer._full_batches(iter([real]), 5))  # pylint: disable=protected-access
  assert batch["image_mask"].shape == (5, 1)
  np.testing.assert_array_equal(rows, [0, 1, 2])
  zero_padded = {k: np.concatenate([v, np.zeros_like(v[:2])]) for k, v in real.items()}
  real_rows = infer._real_rows  # pylint: disable=protected-access
  np.testing.assert_array_equal(real_rows(zero_padded), [0, 1, 2])


def test_until_eos_drops_padding_and_stops_after_eos():
  assert infer._until_eos([0, 7, 8, 1, 9, 9]) == [7, 8, 1]  # pylint: disable=protected-access
  assert infer._until_eos([7, 0, 8]) == [7, 8]  # pylint: disable=protected-access


def test_sentencepiece_detokenizer_round_trip():
  text = "a red circle moving left"
  ids = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL)).encode(text)
  detokenize = infer.sentencepiece_detokenizer(str(SP_MODEL))
  assert detokenize(list(ids) + [1]) == text
