"""The batch-source seam between the trainer and the data layer.

A batch source is any callable with the signature of ``palix.tasks.dataset.get_batches``::

  fn(mixture_or_task_name, *, split, batch_size, feature_lengths, seed, shuffle, repeat,
     start_step, shard_index, num_shards) -> Iterator[Dict[str, np.ndarray]]

(plus its own gin-bound options such as ``image_size`` and ``num_images``). Each item is a dict
of the model's keys, or a tuple of such dicts of different geometry (``batch_parts``; the
trainer takes one gradient over all parts). ``batch_size`` is the number of rows *this shard*
yields (over all parts); ``start_step=k`` starts at batch ``k``. The run files inject
``task_batches`` (SeqIO tasks; TensorFlow is imported only when it is called) and tests inject
``palix.training.synthetic_data.synthetic_batches``.

A source may also name the tasks of its batches' ``task_ids`` (an iterator with a
``task_names`` attribute, :class:`NamedBatches`); the trainer then logs loss and token accuracy
per task. Packed PaLI-X batches (``palix.models.packed_batch``): ``task_batches.packing =
@packed.PackedStream()``, with ``packed.PackedStream`` and ``packed.PackedRows`` (the plain
dataclasses of ``palix.tasks.packed_examples``) configurable here.
"""

from typing import Iterator, Mapping, Optional, Sequence

import gin

from palix.tasks import packed_examples

for _options in (packed_examples.PackedStream, packed_examples.PackedRows):
  gin.external_configurable(_options, module="packed")


class NamedBatches:
  """A batch iterator and the task names of its ``task_ids`` (index ``i`` is task ``i``)."""

  def __init__(self, batches: Iterator, task_names: Sequence[str]):
    self._batches = batches
    self.task_names = tuple(task_names)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._batches)

  def close(self) -> None:
    close = getattr(self._batches, "close", None)
    if close is not None:
      close()


@gin.configurable
def task_batches(mixture_or_task_name: str, *, num_images: int = 1, image_size: int = 224,
                 batch_parts: bool = False,
                 feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]] = None,
                 image_size_by_task: Optional[Mapping[str, int]] = None,
                 packing: Optional[packed_examples.PackedStream] = None, **kwargs):
  """``palix.tasks.dataset.get_batches`` (imported lazily: it pulls in TensorFlow and SeqIO).

  ``batch_parts``, ``feature_lengths_by_task`` and ``image_size_by_task``
  (``palix.tasks.geometry``) shape the repeating streams of training; a finite stream
  (``repeat=False``, teacher-forced evaluation of a mixture) keeps one geometry,
  ``num_images``, ``image_size`` and ``feature_lengths``, for every task. With ``packing`` a
  training stream is packed instead (``palix.tasks.packed_batches``: several examples per row,
  each task's images at their own side, ``packing.sides``).
  """
  # pylint: disable=g-import-not-at-top
  from palix.tasks import dataset
  from palix.tasks import packed_batches
  repeat = kwargs.get("repeat", True)
  names = packed_batches.task_names(mixture_or_task_name)
  if repeat and packing is not None:
    kwargs.pop("feature_lengths", None)  # the rows' sizes are the packing's
    return NamedBatches(packed_batches.get_packed_batches(mixture_or_task_name, stream=packing,
                                                          **kwargs), names)
  if repeat:
    kwargs.update(batch_parts=batch_parts, feature_lengths_by_task=feature_lengths_by_task,
                  image_size_by_task=image_size_by_task)
  batches = dataset.get_batches(mixture_or_task_name, num_images=num_images,
                                image_size=image_size, **kwargs)
  return NamedBatches(batches, names) if repeat else batches
