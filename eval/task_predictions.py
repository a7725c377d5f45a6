"""Decoding (and scoring) a task's examples in batches: one :class:`ExamplePrediction` per example.

Every batch runs the model's ``predict_batch_with_aux`` (one jit-compiled program per batch
geometry and decoding setup). Rows are independent, so an example's prediction does not depend
on the batch size or on its neighbours (tested: batch 4 and batch 1 give the same tokens). Where
the task asks for them, the same batch is also scored with the model's ``score_batch``:

* ``class_scores``: the log-likelihood of every class text of a
  :class:`~palix.eval.aux_metrics.ZeroShotClassification` (``palix.eval.zero_shot.classify``);
* ``target_score``: the log-likelihood of the example's own target (seqio score metrics).
"""

import dataclasses
import functools
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from tqdm import tqdm

from palix import partitioning
from palix.eval import zero_shot
from palix import tokenizer as tokenizer_lib
from palix.models import base as model_base


@dataclasses.dataclass
class ExamplePrediction:
  """One evaluated example: its raw example dict and what the model made of it."""
  example: Dict[str, Any]
  output_ids: List[int]  # generated ids before EOS (palix.tokenizer.answer_ids)
  logprobs: List[float]  # log-probability of each of output_ids
  text: str
  pieces: List[str]
  score: float  # sum of the generated tokens' log-probabilities, EOS included when emitted
  truncated: bool  # the answer filled the decoding length without EOS: it may be cut short
  model_images: Optional[np.ndarray] = None  # the real images as the model saw them (report)
  class_scores: Dict[Tuple[str, ...], np.ndarray] = dataclasses.field(default_factory=dict)
  target_score: Optional[float] = None


class BatchScorer:
  """``score_batch`` on (batch row, text) pairs, padded to a fixed number of rows (one compile)."""

  def __init__(self, model, params, partitioner: partitioning.Partitioner,
               layout: partitioning.DataLayout, tokenizer: tokenizer_lib.Tokenizer,
               target_length: int):
    self._score = jax.jit(model.score_batch)
    self._params, self._partitioner, self._layout = params, partitioner, layout
    self._tokenizer, self._target_length = tokenizer, target_length
    self._text_tokens: Dict[str, np.ndarray] = {}
    self.num_cut_texts = 0

  def _tokens(self, text: str) -> np.ndarray:
    if text not in self._text_tokens:
      tokens, cut = self._tokenizer.target_tokens(text, self._target_length)
      self.num_cut_texts += int(cut)
      self._text_tokens[text] = tokens
    return self._text_tokens[text]

  def score_rows(self, batch: Mapping[str, np.ndarray], rows: Sequence[int],
                 targets: np.ndarray) -> np.ndarray:
    """Log-likelihood of ``targets[k]`` (tokens, EOS included) given batch row ``rows[k]``."""
    size = self._layout.local_batch_size
    out = np.empty((len(rows),), np.float64)
    for start in range(0, len(rows), size):
      chunk = list(rows[start:start + size])
      take = np.array(chunk + [chunk[0]] * (size - len(chunk)))
      scored = {k: np.asarray(batch[k])[take] for k in model_base.INPUT_KEYS}
      tokens = np.zeros((size, self._target_length), np.int32)
      tokens[:len(chunk)] = targets[start:start + size]
      scored["decoder_target_tokens"] = tokens
      scored["decoder_input_tokens"] = model_base.shift_right(tokens)
      scored["decoder_loss_weights"] = (tokens != 0).astype(np.float32)
      with self._partitioner.context():
        values = self._score(self._params, self._partitioner.shard_batch(scored, self._layout))
      out[start:start + len(chunk)] = np.asarray(jax.device_get(values))[:len(chunk)]
    return out

  def score_texts(self, batch: Mapping[str, np.ndarray], pairs: Sequence[Tuple[int, str]]):
    """``zero_shot.classify``'s ``score_fn``: pairs of (batch row, text)."""
    targets = np.stack([self._tokens(text) for _, text in pairs])
    return self.score_rows(batch, [row for row, _ in pairs], targets)


def predict_task(model, params, batches: Iterable[Tuple[Dict[str, np.ndarray], List[Dict]]], *,
                 tokenizer: tokenizer_lib.Tokenizer, partitioner: partitioning.Partitioner,
                 layout: partitioning.DataLayout, target_length: int,
                 decode_kwargs: Optional[Mapping[str, Any]] = None,
                 class_texts: Sequence[Tuple[str, ...]] = (), score_targets: bool = False,
                 keep_model_images: int = 0, rng_seed: Optional[int] = None,
                 total: Optional[int] = None, description: str = "",
                 progress: bool = True) -> List[ExamplePrediction]:
  """Decodes the ``(batch, examples)`` pairs of ``palix.tasks.eval_examples.evaluation_batches``.

  Args:
    model, params: a ``palix.models.base.BaseModel`` and its parameters (laid out by
      ``partitioner``).
    batches: ``(batch, examples)``; the first ``len(examples)`` rows are evaluated.
    tokenizer: the task's vocabulary.
    target_length: decoding length (and the token length of scored texts).
    decode_kwargs: passed to ``predict_batch_with_aux`` (``decode_fn``, ``beam_size``, ...);
      ``max_decode_len`` defaults to ``target_length``.
    class_texts: candidate texts of each zero-shot classification to score.
    score_targets: also score each example's target (seqio score metrics).
    keep_model_images: keep the model's view of the first examples' images (for report cards of
      examples without original pixels).
    rng_seed: decoding RNG for sampling decoders: batch ``i`` uses ``fold_in(key(seed), i)``;
      None passes no RNG (greedy and beam search need none).
  """
  kwargs = {"max_decode_len": target_length, **dict(decode_kwargs or {})}
  scorer = None
  if class_texts or score_targets:
    scorer = BatchScorer(model, params, partitioner, layout, tokenizer, target_length)
  predictions: List[ExamplePrediction] = []
  bar = tqdm(total=total, desc=description, unit="ex", disable=not progress, dynamic_ncols=True)
  try:
    for batch_index, (batch, examples) in enumerate(batches):
      rng = None if rng_seed is None else jax.random.fold_in(jax.random.key(rng_seed),
                                                              batch_index)
      with partitioner.context():
        tokens, aux = model.predict_batch_with_aux(
            params, partitioner.shard_batch(batch, layout), rng, **kwargs)
      tokens = np.asarray(jax.device_get(tokens))
      logprobs = np.asarray(jax.device_get(aux["logprobs"]), np.float64)
      rows = list(range(len(examples)))
      class_tables = {}
      for texts in class_texts:
        class_tables[texts] = zero_shot.classify(
            functools.partial(scorer.score_texts, batch), rows, list(texts),
            batch_size=layout.local_batch_size).scores
      target_scores = None
      if score_targets:
        target_scores = scorer.score_rows(batch, rows, np.asarray(batch["decoder_target_tokens"]))
      for row, example in enumerate(examples):
        ids = tokenizer_lib.answer_ids(tokens[row])
        emitted = len(ids) + tokenizer_lib.ends_with_eos(tokens[row])
        prediction = ExamplePrediction(
            example=example, output_ids=ids, logprobs=logprobs[row, :len(ids)].tolist(),
            text=tokenizer.to_str(ids), pieces=tokenizer.pieces(ids),
            score=math.fsum(logprobs[row, :emitted].tolist()),
            truncated=tokenizer_lib.is_truncated(tokens[row]),
            class_scores={texts: table[row] for texts, table in class_tables.items()},
            target_score=None if target_scores is None else float(target_scores[row]))
        if len(predictions) < keep_model_images:
          mask = np.asarray(batch["image_mask"][row]) > 0
          prediction.model_images = np.asarray(batch["images"][row])[mask]
        predictions.append(prediction)
      bar.update(len(examples))
  finally:
    bar.close()
  return predictions

