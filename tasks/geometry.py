"""Batch geometry per task: how many image slots and tokens a task's batches carry.

A mixture batched as one stream gives every example the largest geometry of the mixture (a video
task's 6 frames, a detection task's 40 target tokens), and the model computes on the padding: on
the demo mixture, a single-image VQA example costs 6x what it needs. With ``batch_parts``
(``palix.tasks.dataset.get_batches``) a batch is a tuple of parts, one per geometry, each task's
rows shaped by :func:`task_geometry`:

* image slots: the task's own count (``source.images_per_example``), else ``num_images``;
* token lengths: ``feature_lengths_by_task[task]`` where given, else ``feature_lengths``;
* image size: ``image_size_by_task[task]`` where given, else the stream's ``image_size`` (None),
  so that each task trains and is evaluated at the resolution it needs (the packed stream of
  ``palix.tasks.packed_batches`` uses the same sides).

Tasks with equal geometry share a part. The trainer's step takes all parts at once (one gradient
over the whole mixed batch, as without parts) and compiles once. The evaluator uses the same
geometry per task, so it also decodes only as many tokens as the task's targets need.
"""

import dataclasses
from typing import Dict, Mapping, Optional

import seqio

from palix.tasks import registry


@dataclasses.dataclass(frozen=True)
class Geometry:
  num_images: int
  feature_lengths: Dict[str, int]
  image_size: Optional[int] = None  # None: the stream's image_size

  def key(self):
    return self.num_images, tuple(sorted(self.feature_lengths.items())), self.image_size


def check_image_sizes(image_size_by_task: Optional[Mapping[str, int]]) -> None:
  """Errors for unknown task names and sizes that are not positive integers."""
  if not image_size_by_task:
    return
  registry.ensure_registered()
  known = set(seqio.TaskRegistry.names())
  for name, size in image_size_by_task.items():
    if name not in known:
      raise ValueError(f"image_size_by_task names {name!r}, which is not a registered task")
    if not isinstance(size, int) or size < 1:
      raise ValueError(f"image_size_by_task[{name!r}] = {size!r}: must be a positive integer")


def check_lengths_by_task(feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]],
                          feature_lengths: Mapping[str, int]) -> None:
  """Errors for unknown task names, other keys than ``feature_lengths``' or longer lengths."""
  if not feature_lengths_by_task:
    return
  registry.ensure_registered()
  known = set(seqio.TaskRegistry.names())
  for name, lengths in feature_lengths_by_task.items():
    if name not in known:
      raise ValueError(f"feature_lengths_by_task names {name!r}, which is not a registered task")
    if not isinstance(lengths, Mapping) or set(lengths) != set(feature_lengths):
      raise ValueError(f"feature_lengths_by_task[{name!r}] must have the keys "
                       f"{sorted(feature_lengths)} (those of feature_lengths); got {lengths!r}")
    for key, length in lengths.items():
      if not isinstance(length, int) or not 1 <= length <= int(feature_lengths[key]):
        raise ValueError(f"feature_lengths_by_task[{name!r}][{key!r}] = {length!r}: must be an "
                         f"integer in [1, {feature_lengths[key]}] (feature_lengths[{key!r}], the "
                         "model's maximum)")


def task_geometry(task_name: str, *, num_images: int, feature_lengths: Mapping[str, int],
                  feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]] = None,
                  image_size_by_task: Optional[Mapping[str, int]] = None) -> Geometry:
  """The geometry of the registered task ``task_name``'s own batches (see the module docstring).

  Raises:
    ValueError: the task needs more image slots than ``num_images`` (the model's maximum).
  """
  registry.ensure_registered()
  source = seqio.TaskRegistry.get(task_name).source
  own = getattr(source, "images_per_example", None)
  if own is not None and own > num_images:
    raise ValueError(f"task {task_name!r} has {own} images per example but num_images is "
                     f"{num_images}; raise NUM_IMAGES (and PaliXConfig.max_images)")
  lengths = (feature_lengths_by_task or {}).get(task_name, feature_lengths)
  return Geometry(own or num_images, {k: int(v) for k, v in lengths.items()},
                  (image_size_by_task or {}).get(task_name))
