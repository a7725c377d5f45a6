"""Evaluation input: a task split's model batches in order, each row with its raw example.

Metrics need what tokens lose: all VQA answers, every reference caption, exact boxes, the
original image size, the image itself for the report. :func:`evaluation_batches` yields
``(batch, examples)``:

* ``batch``: the model features of ``get_batches(task, split=..., shuffle=False, repeat=False)``
  (same preprocessing and feature converter as training, images at ``image_size``);
* ``examples``: the raw example of each of the batch's first ``len(examples)`` rows, from the
  same pipeline element: ``get_batches(..., keep_raw=True)`` carries every row's raw fields next
  to its model features (big_vision's ``keep``), so each example is read once.

Raw example dict (plain Python, no tensors; :func:`raw_example`):

===============  =============================================================================
``task``         task name; ``split``; ``index`` (position in the split)
``record_id``    where it came from (``file:line``, ``Source:split[i]``)
``inputs``       the prompt text; ``targets``: the target text
``image_size``   ``(height, width)`` of the (first) original image or frame
``pixels``       the original images (uint8 ``[n, h, w, 3]``) of computed sources, for the first
                 ``keep_media`` examples only (report cards; file sources' cards read
                 ``image_paths``)
``image_paths``  image files (file sources); ``video_path``: the clip (video sources)
extras           the source's extra fields as tuples of strings (``answers``, ``references``,
                 ``answer_type``, ``question_id``, ``image_id``)
``boxes``        exact normalised ``(ymin, xmin, ymax, xmax)`` ground truth with ``labels``, for
                 sources that know them (``shapes_detection``'s ``boxes/pixels``)
===============  =============================================================================
"""

import dataclasses
import logging
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from palix.tasks import dataset
from palix.tasks.feature_converter import RAW_PREFIX
from palix.tasks.sources import base

Example = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EvalTask:
  """A leaf task as the evaluator needs it: its split size, vocabulary and seqio metrics."""
  name: str
  split: str
  num_examples: int
  vocabulary_path: str
  postprocess_fn: Callable  # (text, example=..., is_target=...) -> metric input
  predict_metric_fns: Tuple[Callable, ...]
  predict_with_aux_metric_fns: Tuple[Callable, ...]
  score_metric_fns: Tuple[Callable, ...]


def leaf_tasks(mixture_or_task_name: str, split: str) -> List[EvalTask]:
  """The tasks of a task or mixture (zero-rate members dropped) with the metric functions they
  declare (seqio's ``predict_metric_fns``, ``predict_with_aux_metric_fns`` and
  ``score_metric_fns``)."""
  provider = dataset.get_task_or_mixture(mixture_or_task_name)
  tasks, _ = dataset.tasks_and_rates(provider)
  found = []
  for task in tasks:
    if not isinstance(task.source, base.ExampleSource):
      raise ValueError(f"task {task.name!r} does not read from a palix ExampleSource")
    if split not in task.splits:
      raise ValueError(f"task {task.name!r} has no split {split!r}; it has {list(task.splits)}")
    vocabulary = task.output_features["targets"].vocabulary
    found.append(EvalTask(
        name=task.name, split=split, num_examples=task.source.num_input_examples(split),
        vocabulary_path=vocabulary.sentencepiece_model_file, postprocess_fn=task.postprocess_fn,
        predict_metric_fns=tuple(task.predict_metric_fns),
        predict_with_aux_metric_fns=tuple(task.predict_with_aux_metric_fns),
        score_metric_fns=tuple(task.score_metric_fns)))
  return found


def _text(value):
  """A string feature as Python: ``str``, or a tuple of ``str`` for a vector."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return tuple(v.decode("utf-8") for v in np.asarray(value).reshape(-1))


def raw_example(task_name: str, split: str, index: int, fields: Mapping[str, np.ndarray],
                keep_media: bool) -> Example:
  """The raw example dict (see the module docstring) of one row's raw fields (``get_batches``'
  ``raw/`` columns without the prefix)."""
  example: Example = {"task": task_name, "split": split, "index": index}
  fields = dict(fields)
  sizes = fields.pop("image/sizes", None)
  if sizes is not None:
    example["image_size"] = tuple(int(x) for x in sizes[0])
  pixels = fields.pop("image/pixels", None)
  if keep_media and pixels is not None:
    example["pixels"] = pixels
  if "image/paths" in fields:
    example["image_paths"] = tuple(p for p in _text(fields.pop("image/paths")) if p)
  if "video/path" in fields:
    example["video_path"] = _text(fields.pop("video/path"))
  boxes, labels = fields.pop("boxes/pixels", None), fields.pop("boxes/labels", None)
  if boxes is not None:
    height, width = example["image_size"]
    found = [(box, label) for box, label in zip(boxes.tolist(), _text(labels)) if label]
    example["boxes"] = [(top / height, left / width, bottom / height, right / width)
                        for (top, left, bottom, right), _ in found]
    example["labels"] = [label for _, label in found]
  for key, value in fields.items():
    is_text = isinstance(value, bytes) or np.asarray(value).dtype == object
    example[key] = _text(value) if is_text else value
  return example


def evaluation_batches(task_name: str, *, split: str, batch_size: int,
                       feature_lengths: Mapping[str, int], num_images: int = 1,
                       image_size: int = 224, max_examples: Optional[int] = None,
                       overflow: str = "error",
                       keep_media: int = 0) -> Iterator[Tuple[Dict[str, np.ndarray],
                                                              List[Example]]]:
  """``(batch, examples)`` over the first ``max_examples`` examples of a task's split, in order.

  Every batch has ``batch_size`` rows; only the first ``len(examples)`` are evaluated (the rest
  is the data layer's zero padding or examples past ``max_examples``).

  Args:
    task_name: a registered task (not a mixture: metrics are per task).
    split, batch_size, feature_lengths, num_images, image_size, overflow: as ``get_batches``.
    max_examples: evaluate only the first examples of the split (all by default).
    keep_media: the first ``keep_media`` examples carry their original ``pixels``.
  """
  provider = dataset.get_task_or_mixture(task_name)
  if not hasattr(provider, "source"):
    raise ValueError(f"{task_name!r} is a mixture; evaluation_batches takes one of its tasks "
                     "(see leaf_tasks)")
  source = provider.source
  total = source.num_input_examples(split)
  if max_examples is not None:
    if max_examples < 1:
      raise ValueError(f"max_examples must be >= 1; got {max_examples}")
    total = min(total, max_examples)
  if split in source.augment_splits:
    logging.warning("task %r split %r is augmented by its source (random crops/flips): "
                    "evaluation images differ from the originals", task_name, split)
  batches = dataset.get_batches(
      task_name, split=split, batch_size=batch_size, feature_lengths=dict(feature_lengths),
      num_images=num_images, image_size=image_size, seed=0, shuffle=False, repeat=False,
      overflow=overflow, keep_raw=True)
  start = 0
  try:
    for batch in batches:
      count = min(batch_size, total - start)
      raw = {k[len(RAW_PREFIX):]: v for k, v in batch.items() if k.startswith(RAW_PREFIX)}
      examples = [raw_example(task_name, split, start + row, {k: v[row] for k, v in raw.items()},
                              start + row < keep_media) for row in range(count)]
      yield {k: v for k, v in batch.items() if not k.startswith(RAW_PREFIX)}, examples
      start += count
      if start >= total:  # stop before the pipeline prepares another batch
        break
  finally:
    batches.close()
  if start < total:
    raise base.DataError(f"task {task_name!r} split {split!r}: the batch stream ended after "
                         f"{start} of {total} examples")
