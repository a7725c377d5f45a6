"""Inference and evaluation from a checkpoint, over a task split (``palix infer``).

* ``infer``: decodes every example with the model's ``predict_batch_with_aux`` and writes one JSON
  line per example to ``INFER_OUTPUT_DIR/<task>-<split>.jsonl`` (``...-<i>-of-<n>.jsonl`` per
  process when there are several): ``index`` (position in the split), ``inputs``, ``prediction`` and
  ``target`` token ids (cut after EOS, padding dropped), ``score`` (sum of the prediction's token
  log-probabilities when the model returns ``logprobs``) and ``text`` when a ``detokenize_fn`` is
  given.
* ``evaluate``: teacher-forced metrics (the model's ``eval_fn``: loss, accuracy, ...) averaged
  over the split, written to ``EVAL_OUTPUT_DIR/eval_metrics.json``.

Both read parameters from a training checkpoint or a params-only checkpoint
(``palix.training.checkpoints.load_params``) directly into their sharded layout.
"""

import itertools
import json
import os
import pathlib
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np

from palix import partitioning
from palix.training import checkpoints as checkpoints_lib
from palix.training import param_paths
from palix.training import train_state as train_state_lib


def load_model_params(model, checkpoint_path: str, partitioner: partitioning.Partitioner,
                      input_shapes, input_types):
  """All of the model's parameters from ``checkpoint_path``, sharded by ``partitioner``."""
  boxed = train_state_lib.boxed_variable_shapes(model, jax.random.key(0), input_shapes,
                                                input_types)["params"]
  shardings = partitioner.param_shardings(boxed)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  loaded = checkpoints_lib.load_params(checkpoint_path, abstract)
  return param_paths.map_with_path_str(lambda path, _: loaded[path], abstract)


def _real_rows(batch) -> np.ndarray:
  """Indices of real examples: padding rows (from ``repeat=False``) have no image and no prompt."""
  padding = np.ones(len(next(iter(batch.values()))), bool)
  for key in ("image_mask", "encoder_input_tokens"):
    if key in batch:
      padding &= ~np.asarray(batch[key]).reshape(len(padding), -1).any(axis=1)
  return np.flatnonzero(~padding)


def _full_batches(batches: Iterator, local_batch_size: int) -> Iterator[Tuple[Dict, np.ndarray]]:
  """``(batch, real row indices)``; a short batch is filled up with all-zero (padding) rows."""
  for batch in batches:
    rows = len(next(iter(batch.values())))
    if rows < local_batch_size:
      batch = {k: np.concatenate([v, np.zeros((local_batch_size - rows,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, _real_rows(batch)


def _setup(model, get_batches_fn, mixture_or_task_name, task_feature_lengths, split, batch_size,
           partitioner, checkpoint_path):
  partitioner = partitioner or partitioning.Partitioner()
  layout = partitioner.data_layout(batch_size)
  batches = get_batches_fn(mixture_or_task_name, split=split, batch_size=layout.local_batch_size,
                           feature_lengths=dict(task_feature_lengths), seed=0, shuffle=False,
                           repeat=False, start_step=0, shard_index=layout.shard_index,
                           num_shards=layout.num_shards)
  batches = _full_batches(batches, layout.local_batch_size)
  first = next(batches, None)
  if first is None:
    raise ValueError(f"{mixture_or_task_name!r} split {split!r} yielded no batch")
  shapes = {k: (batch_size,) + v.shape[1:] for k, v in first[0].items()}
  types = {k: v.dtype for k, v in first[0].items()}
  params = load_model_params(model, checkpoint_path, partitioner, shapes, types)
  return partitioner, layout, params, itertools.chain([first], batches)


def _local_rows(array: jax.Array, layout: partitioning.DataLayout) -> np.ndarray:
  """This process's rows of a replicated global array."""
  full = np.asarray(array.addressable_data(0))
  start = layout.shard_index * layout.local_batch_size
  return full[start:start + layout.local_batch_size]


def _until_eos(tokens, eos_id: int = 1):
  out = []
  for t in np.asarray(tokens).tolist():
    if t == 0 and not out:
      continue
    out.append(int(t))
    if t == eos_id:
      break
  return [t for t in out if t != 0]


def _output_path(folder: str, name: str, process_count: int) -> pathlib.Path:
  suffix = "" if process_count == 1 else f"-{jax.process_index():05d}-of-{process_count:05d}"
  return pathlib.Path(folder) / f"{name}{suffix}.jsonl"


@gin.configurable
def sentencepiece_detokenizer(model_path: str = gin.REQUIRED) -> Callable:
  """``ids -> text`` with a SentencePiece model (EOS and padding dropped), for ``infer``'s
  ``detokenize_fn``; e.g. ``tasks/assets/palix_sp.model``."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
  return lambda ids: processor.decode([int(i) for i in ids if i not in (0, 1)])


@gin.configurable
def infer(*, model=gin.REQUIRED, checkpoint_path: str = gin.REQUIRED,
          output_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          get_batches_fn: Callable = gin.REQUIRED, batch_size: int = 32,
          split: str = "validation", partitioner: Optional[partitioning.Partitioner] = None,
          decode_kwargs: Optional[Mapping[str, Any]] = None,
          detokenize_fn: Optional[Callable] = None, max_batches: Optional[int] = None) -> str:
  """Writes predictions for ``split`` (see the module docstring); returns the file path."""
  partitioner, layout, params, batches = _setup(
      model, get_batches_fn, mixture_or_task_name, task_feature_lengths, split, batch_size,
      partitioner, checkpoint_path)
  decode_kwargs = dict(decode_kwargs or {})
  predict = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b, **decode_kwargs),
                    out_shardings=partitioner.replicated)
  os.makedirs(output_dir, exist_ok=True)
  path = _output_path(output_dir, f"{mixture_or_task_name}-{split}", jax.process_count())
  with partitioner.context(), open(path, "w") as out:
    for index, (batch, rows) in enumerate(batches):
      if max_batches is not None and index >= max_batches:
        break
      tokens, aux = predict(params, partitioner.shard_batch(batch, layout))
      tokens = _local_rows(tokens, layout)
      logprobs = _local_rows(aux["logprobs"], layout) if "logprobs" in aux else None
      for row in rows:
        prediction = _until_eos(tokens[row])
        record = {
            "index": int(index * batch_size + layout.shard_index * layout.local_batch_size + row),
            "inputs": _until_eos(batch["encoder_input_tokens"][row]),
            "prediction": prediction,
        }
        if "decoder_target_tokens" in batch:
          record["target"] = _until_eos(batch["decoder_target_tokens"][row])
        if logprobs is not None:
          record["score"] = float(np.sum(logprobs[row][:len(prediction)]))
        if detokenize_fn is not None:
          record["text"] = detokenize_fn(prediction)
        out.write(json.dumps(record) + "\n")
  return str(path)


@gin.configurable
def evaluate(*, model=gin.REQUIRED, checkpoint_path: str = gin.REQUIRED,
             output_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             get_batches_fn: Callable = gin.REQUIRED, batch_size: int = 32,
             split: str = "validation", partitioner: Optional[partitioning.Partitioner] = None,
             max_batches: Optional[int] = None) -> Dict[str, float]:
  """Teacher-forced metrics over ``split``, weighted by real target tokens (or examples)."""
  partitioner, layout, params, batches = _setup(
      model, get_batches_fn, mixture_or_task_name, task_feature_lengths, split, batch_size,
      partitioner, checkpoint_path)
  eval_step = jax.jit(lambda p, b: model.eval_fn(p, b)[1], out_shardings=partitioner.replicated)
  totals: Dict[str, float] = {}
  weight_total, num_examples = 0.0, 0
  with partitioner.context():
    for index, (batch, rows) in enumerate(batches):
      if max_batches is not None and index >= max_batches:
        break
      metrics = {k: float(v) for k, v in jax.device_get(
          eval_step(params, partitioner.shard_batch(batch, layout))).items()}
      weight = metrics.get("num_tokens", float(batch_size))
      for k, v in metrics.items():
        totals[k] = totals.get(k, 0.0) + (v if k.startswith("num_") else v * weight)
      weight_total += weight
      num_examples += len(rows)
  results = {k: (v if k.startswith("num_") else v / max(weight_total, 1e-9))
             for k, v in totals.items()}
  results["num_eval_examples"] = float(num_examples)
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "eval_metrics.json"), "w") as f:
      json.dump({"checkpoint_path": checkpoint_path, "split": split, **results}, f, indent=1)
  return results
