"""Training and testing the image classifier in-process, for the experiment drivers.

``train_classifier`` runs the palix trainer (``palix.training.trainer.train``, as ``palix train``
does) on a classification task and returns the parameters with the process CPU time the run took;
``test_metrics`` runs the model's ``eval_fn`` over one pass of a split (plain or packed batches),
weighting each batch by its real images, as ``palix infer``'s teacher-forced evaluation does.
"""

import dataclasses
import functools
import tempfile
import time
from typing import Any, Dict, Optional

import jax

from palix.models.classifier import ClassifierModel
from palix.training import optimizers
from palix.training import schedules
from palix.training import trainer


@dataclasses.dataclass(frozen=True)
class TrainSetting:
  """The budget and optimizer of one run (AdamW, cosine schedule with warm-up, clipping 1.0)."""
  steps: int
  batch_size: int
  learning_rate: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 1e-4


@dataclasses.dataclass
class TrainedRun:
  params: Any
  cpu_seconds: float   # process CPU time (user + system, all threads) of the training call
  wall_seconds: float


def train_classifier(model: ClassifierModel, *, task: str, setting: TrainSetting, seed: int,
                     batch_source, model_dir: Optional[str] = None) -> TrainedRun:
  """Trains ``model`` on ``task``'s train split with ``batch_source`` (a ``get_batches``-like
  callable with its image options bound, e.g. ``functools.partial(get_class_batches,
  image_size=28)``)."""
  optimizer = optimizers.Optimizer(
      learning_rate_fn=schedules.cosine(setting.learning_rate, total_steps=setting.steps,
                                        warmup_steps=min(setting.warmup_steps,
                                                         setting.steps // 10)),
      base=functools.partial(optimizers.adamw, weight_decay=setting.weight_decay),
      clip_grad_norm=1.0)
  with tempfile.TemporaryDirectory() as scratch:
    cpu, wall = time.process_time(), time.time()
    state = trainer.train(
        model=model, model_dir=model_dir or scratch, train_steps=setting.steps,
        batch_size=setting.batch_size, mixture_or_task_name=task, task_feature_lengths={},
        get_batches_fn=batch_source, optimizer=optimizer, seed=seed,
        checkpoint_period=setting.steps, keep_checkpoints=1, async_checkpointing=False,
        log_period=max(setting.steps // 10, 1), progress_bar=False)
    params = jax.device_get(state.params)
    return TrainedRun(params, time.process_time() - cpu, time.time() - wall)


def test_metrics(model: ClassifierModel, params, *, task: str, batch_source, split: str = "test",
                 batch_size: int = 256, eval_fn=None) -> Dict[str, float]:
  """``{'accuracy', 'loss', 'num_examples'}`` over every example of ``split`` (one pass)."""
  eval_fn = eval_fn or jax.jit(lambda p, b: model.eval_fn(p, b)[1])
  totals, count = {"accuracy": 0.0, "loss": 0.0}, 0.0
  for batch in batch_source(task, split=split, batch_size=batch_size, shuffle=False,
                            repeat=False):
    metrics = jax.device_get(eval_fn(params, batch))
    weight = float(metrics["num_tokens"])
    for key in totals:
      totals[key] += float(metrics[key]) * weight
    count += weight
  return {**{k: v / count for k, v in totals.items()}, "num_examples": count}


