"""Evaluation input: a task split's model batches in order, each row with its raw example.

Metrics need what tokens lose: all VQA answers, every reference caption, exact boxes, the
original image size, the image itself for the report. :func:`evaluation_batches` yields
``(batch, examples)``:

* ``batch``: exactly what ``get_batches(task, split=..., shuffle=False, repeat=False)`` yields
  (same preprocessing and feature converter as training, images at ``image_size``);
* ``examples``: the raw example of each of the batch's first ``len(examples)`` rows, read from
  the task's source by the same index (a finite unshuffled stream visits the split in index
  order). Each row's prompt tokens are checked against its raw prompt, so a mismatch raises
  instead of scoring predictions against the wrong targets.

Raw example dict (plain Python, no tensors):

===============  =============================================================================
``task``         task name; ``split``; ``index`` (position in the split)
``record_id``    where it came from (``file:line``, ``Source:split[i]``)
``inputs``       the prompt text; ``targets``: the target text
``image_size``   ``(height, width)`` of the (first) original image; None for video files
``pixels``       the original images/frames (uint8 ``[n, h, w, 3]``, or a list of ``[h, w, 3]``
                 for image files), for the first ``keep_media`` examples only (report cards)
``image_paths``  image files (file sources); ``video_path``: the clip (video sources)
extras           the source's extra fields as tuples of strings (``answers``, ``references``,
                 ``answer_type``, ``question_id``, ``image_id``)
``boxes``        exact normalised ``(ymin, xmin, ymax, xmax)`` ground truth with ``labels``, for
                 sources that know them (``shapes_detection``)
===============  =============================================================================
"""

import dataclasses
import logging
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from PIL import Image

from palix.tasks import dataset
from palix.tasks import media_io
from palix.tasks.sources import base
from palix.tasks.sources import episodes
from palix.tasks.sources import shapes_detection

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


def _image_size(path: str) -> Tuple[int, int]:
  try:
    with Image.open(path) as image:
      return image.height, image.width
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many types
    raise media_io.DataError(f"{path}: cannot read the image header ({type(e).__name__}: {e})")


def raw_example(task_name: str, source: base.ExampleSource, split: str, index: int,
                keep_media: bool) -> Example:
  """The raw example ``index`` of ``split`` (see the module docstring)."""
  example: Example = {"task": task_name, "split": split, "index": index}
  if isinstance(source, base.PythonSource):
    generated = source.make_example(split, index)
    example.update(record_id=f"{type(source).__name__}:{split}[{index}]", inputs=generated.inputs,
                   targets=generated.targets, image_size=tuple(generated.pixels.shape[1:3]))
    if keep_media:
      example["pixels"] = generated.pixels
    if isinstance(source, shapes_detection.ShapesDetectionSource):
      _, placed = source.objects(split, index)
      height, width = generated.pixels.shape[1:3]
      example["boxes"] = [(top / height, left / width, bottom / height, right / width)
                          for (top, left, bottom, right), _ in placed]
      example["labels"] = [label for _, label in placed]
    return example
  if isinstance(source, episodes.EpisodeSource):
    episode = source.raw_example(split, index)
    paths = tuple(episode.get("image_paths", ()))
    example.update({k: v for k, v in episode.items()
                    if k not in ("pixels", "image_paths", "members")})
    example["image_paths"] = paths
    if "pixels" in episode:
      example["image_size"] = tuple(episode["pixels"].shape[1:3])
    else:
      example["image_size"] = _image_size(paths[0])
    if keep_media:
      example["pixels"] = (episode["pixels"] if "pixels" in episode
                           else [media_io.read_image(p) for p in paths])
    return example
  if not isinstance(source, base.TableSource):
    raise ValueError(f"task {task_name!r}: cannot read raw examples of a {type(source).__name__} "
                     "(expected a TableSource, PythonSource or EpisodeSource)")
  record = source.records(split)[index]
  example.update(record_id=record.record_id, inputs=record.inputs, targets=record.targets,
                 image_paths=tuple(record.image_paths), video_path=record.video_path,
                 image_size=_image_size(record.image_paths[0]) if record.image_paths else None)
  for key, values in record.extras.items():
    example.setdefault(key, tuple(values))
  if keep_media:
    if record.video_path:
      example["pixels"] = media_io.read_video(record.video_path, source.num_frames)
      example["image_size"] = tuple(example["pixels"].shape[1:3])
    else:
      example["pixels"] = [media_io.read_image(p) for p in record.image_paths]
  return example


def _expected_prompt(vocabulary, text: str, length: int) -> np.ndarray:
  """The prompt row the feature converter writes (EOS last; cut to ``length`` when truncating)."""
  ids = list(vocabulary.encode(text)) + [1]
  if len(ids) > length:
    ids = ids[:length - 1] + [1]
  row = np.zeros((length,), np.int64)
  row[:len(ids)] = ids
  return row


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
  if split in getattr(source, "_augment_splits", ()):  # the sources' own record of it
    logging.warning("task %r split %r is augmented by its source (random crops/flips): "
                    "evaluation images differ from the originals", task_name, split)
  vocabulary = provider.output_features["inputs"].vocabulary
  prompt_length = int(feature_lengths["inputs"])
  batches = dataset.get_batches(
      task_name, split=split, batch_size=batch_size, feature_lengths=dict(feature_lengths),
      num_images=num_images, image_size=image_size, seed=0, shuffle=False, repeat=False,
      overflow=overflow)
  start = 0
  try:
    for batch in batches:
      count = min(batch_size, total - start)
      examples = [raw_example(task_name, source, split, start + row, start + row < keep_media)
                  for row in range(count)]
      for row, example in enumerate(examples):
        expected = _expected_prompt(vocabulary, example["inputs"], prompt_length)
        if not np.array_equal(expected, batch["encoder_input_tokens"][row]):
          raise base.DataError(
              f"task {task_name!r} split {split!r}: batch row {row} of example {start + row} "
              f"({example['record_id']}) does not hold the prompt {example['inputs']!r}; the "
              "batch stream and the source disagree on example order")
      yield batch, examples
      start += count
      if start >= total:  # stop before the pipeline prepares another batch
        break
  finally:
    batches.close()
  if start < total:
    raise base.DataError(f"task {task_name!r} split {split!r}: the batch stream ended after "
                         f"{start} of {total} examples")
