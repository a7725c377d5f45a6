"""An answer decoded token by token: the Generator's end rules, streamed text, boxes."""

import numpy as np
import pytest
import sentencepiece

from palix import generate
from palix import loc_tokens
from palix.serve.answer import Answer

from serving_testing import DETECT_ANSWER, SP_MODEL, tiny_model


@pytest.fixture(scope="module")
def processor():
  return sentencepiece.SentencePieceProcessor(model_file=SP_MODEL)


def _feed(answer, tokens):
  deltas = []
  for token in tokens:
    deltas.append(answer.add(token))
    if answer.finished:
      break
  return deltas


def test_a_detection_answer_streams_its_text_and_parses_its_boxes(processor):
  ids = processor.encode(DETECT_ANSWER)
  answer = Answer(processor.decode, eos_id=1, max_new_tokens=len(ids) + 1)
  deltas = _feed(answer, ids + [1, 0, 0])
  assert deltas[-1] is None and "".join(deltas[:-1]) == DETECT_ANSWER == answer.text
  assert answer.finished and not answer.truncated and answer.row == ids + [1]
  result = answer.result()
  assert result["tokens"] == ids and result["text"] == DETECT_ANSWER
  # Bins (100, 200, 500, 600) and (300, 50, 900, 400) over 1023, as loc_tokens.dequantize.
  expected = [("cat", (100, 200, 500, 600)), ("dog", (300, 50, 900, 400))]
  assert [b["label"] for b in result["boxes"]] == ["cat", "dog"]
  for box, (_, bins) in zip(result["boxes"], expected):
    np.testing.assert_allclose([box[k] for k in ("ymin", "xmin", "ymax", "xmax")],
                               np.array(bins) / 1023)
  assert [(d.label, d.box) for d in loc_tokens.parse_detections(answer.text)] == [
      (b["label"], (b["ymin"], b["xmin"], b["ymax"], b["xmax"])) for b in result["boxes"]]


def test_max_new_tokens_truncates_and_eos_or_padding_ends_the_answer(processor):
  ids = processor.encode("a red circle")
  answer = Answer(processor.decode, eos_id=1, max_new_tokens=3)
  _feed(answer, ids)
  assert answer.finished and answer.truncated and answer.tokens == ids[:3]
  with pytest.raises(ValueError, match="finished"):
    answer.add(ids[0])
  for end in (1, 0):  # EOS, or padding (what the decoders write after EOS), ends it early
    answer = Answer(processor.decode, eos_id=1, max_new_tokens=3)
    assert _feed(answer, [ids[0], end, ids[1]]) == ["a", None]
    assert answer.finished and not answer.truncated and answer.tokens == [ids[0]]


def test_text_is_the_generators_detokenization_also_beyond_the_vocabulary():
  generator = generate.Generator(tiny_model(), None, SP_MODEL)  # only its detokenizer is used
  beyond = 2040  # the embedding table (2048) is larger than the vocabulary (1674 pieces)
  ids = generator.processor.encode("red") + [beyond] + generator.processor.encode("blue")
  answer = Answer(generator.detokenize, eos_id=1, max_new_tokens=10)
  deltas = _feed(answer, ids + [1])
  assert answer.text == generator.detokenize(ids) and answer.text.startswith("red")
  assert "".join(deltas[:-1]) == answer.text and answer.tokens == ids
