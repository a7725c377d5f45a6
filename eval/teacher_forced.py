"""Teacher-forced evaluation of a checkpoint (``palix infer`` with ``gin/runs/eval_teacher_forced.gin``).

The model's ``eval_fn`` (its loss without dropout, token accuracy, ...) over every batch of a
:class:`~palix.training.checkpoint_split.CheckpointSplit`, averaged over the split weighted by
real target tokens (``num_tokens``; examples when a model reports none), written to
``EVAL_OUTPUT_DIR/eval_metrics.json``. Nothing is decoded: for metrics on generated text (VQA
accuracy, CIDEr, mAP) see the benchmark evaluator, ``palix.eval.evaluator`` (``palix eval``).
Padding rows of the last batch carry no loss weight, so they count for nothing.
"""

import json
import os
from typing import Dict, Optional

import gin
import jax

from palix.training.checkpoint_split import CheckpointSplit


@gin.configurable
def evaluate_teacher_forced(*, checkpoint_split: CheckpointSplit = gin.REQUIRED,
                            output_dir: str = gin.REQUIRED,
                            max_batches: Optional[int] = None) -> Dict[str, float]:
  """Teacher-forced metrics over the split (see the module docstring); also returned."""
  opened = checkpoint_split.open()
  partitioner, layout = opened.partitioner, opened.layout
  model = checkpoint_split.model
  eval_step = jax.jit(lambda p, b: model.eval_fn(p, b)[1], out_shardings=partitioner.replicated)
  totals: Dict[str, float] = {}
  weight_total, num_examples = 0.0, 0
  with partitioner.context():
    for index, (batch, rows) in enumerate(opened.batches):
      if max_batches is not None and index >= max_batches:
        break
      metrics = {k: float(v) for k, v in jax.device_get(
          eval_step(opened.params, partitioner.shard_batch(batch, layout))).items()}
      weight = metrics.get("num_tokens", float(checkpoint_split.batch_size))
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
      json.dump({"checkpoint_path": checkpoint_split.checkpoint_path,
                 "split": checkpoint_split.split, **results}, f, indent=1)
  return results
