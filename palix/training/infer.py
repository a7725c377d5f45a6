"""Inference from a checkpoint over a task split (``palix infer`` with ``gin/runs/infer.gin``).

``infer`` decodes every example of a :class:`~palix.training.checkpoint_split.CheckpointSplit`
with the model's ``predict_batch_with_aux`` and writes one JSON line per example to
``INFER_OUTPUT_DIR/<task>-<split>.jsonl`` (``...-<i>-of-<n>.jsonl`` per process when there are
several):

* ``index``: the position in the split;
* ``inputs``, ``prediction``, ``target``: token ids through EOS (padding dropped; the end of an
  answer is ``palix.tokenizer``'s rule);
* ``truncated``: the prediction filled the decoding length without EOS (it may be cut short;
  also logged as a warning with the count);
* ``score``: the sum of the prediction's token log-probabilities, EOS included (when the model
  returns ``logprobs``);
* ``text``: the prediction's text, when ``vocabulary_path`` is set.

Teacher-forced metrics of a checkpoint: ``palix.eval.teacher_forced``; benchmark metrics:
``palix.eval.evaluator`` (``palix eval``).
"""

import json
import logging
import os
import pathlib
from typing import Any, List, Mapping, Optional

import gin
import jax
import numpy as np

from palix import tokenizer as tokenizer_lib
from palix.training.checkpoint_split import CheckpointSplit, local_rows

logger = logging.getLogger(__name__)


def _output_path(folder: str, name: str, process_count: int) -> pathlib.Path:
  suffix = "" if process_count == 1 else f"-{jax.process_index():05d}-of-{process_count:05d}"
  return pathlib.Path(folder) / f"{name}{suffix}.jsonl"


def _through_eos(tokens, eos_id: int) -> List[int]:
  """An answer's ids and, when it ended with one, its EOS."""
  ids = tokenizer_lib.answer_ids(tokens, eos_id)
  return ids + [eos_id] if tokenizer_lib.ends_with_eos(tokens, eos_id) else ids


@gin.configurable
def infer(*, checkpoint_split: CheckpointSplit = gin.REQUIRED, output_dir: str = gin.REQUIRED,
          decode_kwargs: Optional[Mapping[str, Any]] = None,
          vocabulary_path: Optional[str] = None, max_batches: Optional[int] = None,
          eos_id: int = tokenizer_lib.EOS_ID) -> str:
  """Writes predictions (see the module docstring); returns the file path.

  Args:
    checkpoint_split: the model, its checkpoint and the split.
    output_dir: where the JSONL file goes.
    decode_kwargs: for ``predict_batch_with_aux`` (``decode_fn``, ``max_decode_len``, ...).
    vocabulary_path: a SentencePiece model; adds each prediction's ``text``.
    max_batches: stop after this many batches (a quick look).
    eos_id: the vocabulary's end-of-sequence id.
  """
  opened = checkpoint_split.open()
  partitioner, layout = opened.partitioner, opened.layout
  model = checkpoint_split.model
  decode_kwargs = dict(decode_kwargs or {})
  tokenizer = tokenizer_lib.get_tokenizer(vocabulary_path) if vocabulary_path else None
  os.makedirs(output_dir, exist_ok=True)
  path = _output_path(output_dir, checkpoint_split.name, jax.process_count())
  num_truncated, num_written = 0, 0
  with partitioner.context(), open(path, "w") as out:
    for index, (batch, rows) in enumerate(opened.batches):
      if max_batches is not None and index >= max_batches:
        break
      tokens, aux = model.predict_batch_with_aux(opened.params,
                                                 partitioner.shard_batch(batch, layout),
                                                 **decode_kwargs)
      tokens = local_rows(tokens, layout)
      logprobs = local_rows(aux["logprobs"], layout) if "logprobs" in aux else None
      for row in rows:
        prediction = _through_eos(tokens[row], eos_id)
        truncated = tokenizer_lib.is_truncated(tokens[row], eos_id)
        record = {
            "index": int(index * checkpoint_split.batch_size
                         + layout.shard_index * layout.local_batch_size + row),
            "inputs": _through_eos(batch["encoder_input_tokens"][row], eos_id),
            "prediction": prediction,
            "truncated": truncated,
        }
        if "decoder_target_tokens" in batch:
          record["target"] = _through_eos(batch["decoder_target_tokens"][row], eos_id)
        if logprobs is not None:
          record["score"] = float(np.sum(logprobs[row][:len(prediction)]))
        if tokenizer is not None:
          record["text"] = tokenizer.to_str(prediction)
        out.write(json.dumps(record) + "\n")
        num_truncated += truncated
        num_written += 1
  if num_truncated:
    logger.warning("%d of %d predictions filled the decoding length without EOS and may be cut "
                   "short (\"truncated\": true in %s); raise TASK_FEATURE_LENGTHS['targets'] or "
                   "decode_kwargs' max_decode_len", num_truncated, num_written, path)
  return str(path)
