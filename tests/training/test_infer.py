"""``palix infer``'s JSONL from a scripted model: token lists, the truncated flag, scores, text."""

import json
import logging

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from palix import tokenizer as tokenizer_lib
from palix.models import base
from palix.training import infer
from palix.training.checkpoint_split import CheckpointSplit

LENGTHS = {"inputs": 4, "targets": 4}
# What the scripted model decodes for each row: an answer with EOS, one that fills the decoding
# length (truncated), and EOS at once.
DECODED = np.array([[5, 6, 1, 0], [7, 8, 9, 9], [1, 0, 0, 0]], np.int32)
LOGPROBS = np.array([[-0.5, -0.25, -0.125, 0.0], [-1.0, -2.0, -3.0, -4.0], [-0.75, 0, 0, 0]],
                    np.float32)


class ScriptedModel(base.BaseModel):
  """Decodes ``DECODED`` (one row per example, by the prompt's first token); no real network."""

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    return {"params": {"w": jnp.zeros((2,), jnp.float32)}}

  def loss_fn(self, params, batch, rng):
    raise NotImplementedError

  def score_batch(self, params, batch):
    raise NotImplementedError

  def example_inputs(self, batch_size=1):
    return {}

  def predict_batch_with_aux(self, params, batch, rng=None, **decode_kwargs):
    rows = np.asarray(batch["encoder_input_tokens"])[:, 0] - 100  # prompts start 100, 101, ...
    rows = np.clip(rows, 0, len(DECODED) - 1)
    return jnp.asarray(DECODED[rows]), {"logprobs": jnp.asarray(LOGPROBS[rows])}


def _batches(mixture_or_task_name, *, batch_size, repeat, **kwargs):
  assert not repeat and mixture_or_task_name == "scripted"
  for start in range(0, len(DECODED), batch_size):
    rows = range(start, min(start + batch_size, len(DECODED)))
    yield {"image_mask": np.ones((len(rows), 1), np.int32),
           "encoder_input_tokens": np.array([[100 + r, 1, 0, 0] for r in rows], np.int32),
           "decoder_target_tokens": np.array([[20 + r, 21, 1, 0] for r in rows], np.int32)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("scripted") / "params"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(path), {"params": {"w": np.zeros((2,), np.float32)}})
  return path


@pytest.mark.parametrize("batch_size", [2, 4])  # a short last batch is padded, then skipped
def test_predictions_end_by_the_tokenizers_rule_and_flag_truncation(checkpoint, tmp_path, caplog,
                                                                     batch_size):
  split = CheckpointSplit(model=ScriptedModel(), checkpoint_path=str(checkpoint),
                          mixture_or_task_name="scripted", task_feature_lengths=LENGTHS,
                          get_batches_fn=_batches, batch_size=batch_size)
  with caplog.at_level(logging.WARNING):
    path = infer.infer(checkpoint_split=split, output_dir=str(tmp_path),
                       vocabulary_path=tokenizer_lib.get_tokenizer().model_path)
  records = [json.loads(line) for line in open(path)]
  assert [r["index"] for r in records] == [0, 1, 2]
  assert [r["prediction"] for r in records] == [[5, 6, 1], [7, 8, 9, 9], [1]]
  assert [r["truncated"] for r in records] == [False, True, False]
  assert [r["inputs"] for r in records] == [[100, 1], [101, 1], [102, 1]]
  assert [r["target"] for r in records] == [[20, 21, 1], [21, 21, 1], [22, 21, 1]]
  # The score sums the emitted tokens' log-probabilities, EOS included.
  assert [r["score"] for r in records] == pytest.approx([-0.875, -10.0, -0.75])
  text = tokenizer_lib.get_tokenizer().to_str
  assert [r["text"] for r in records] == [text([5, 6]), text([7, 8, 9, 9]), ""]
  warnings = [r.getMessage() for r in caplog.records if "may be cut short" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("1 of 3 predictions")
