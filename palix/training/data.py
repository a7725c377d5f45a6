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
"""

from typing import Mapping, Optional

import gin


@gin.configurable
def task_batches(mixture_or_task_name: str, *, num_images: int = 1, image_size: int = 224,
                 batch_parts: bool = False,
                 feature_lengths_by_task: Optional[Mapping[str, Mapping[str, int]]] = None,
                 **kwargs):
  """``palix.tasks.dataset.get_batches`` (imported lazily: it pulls in TensorFlow and SeqIO).

  ``batch_parts`` and ``feature_lengths_by_task`` (``palix.tasks.geometry``) shape the
  repeating streams of training; a finite stream (``repeat=False``, teacher-forced evaluation of
  a mixture) keeps one geometry, ``num_images`` and ``feature_lengths``, for every task.
  """
  from palix.tasks import dataset  # pylint: disable=g-import-not-at-top
  if kwargs.get("repeat", True):
    kwargs.update(batch_parts=batch_parts,
                  feature_lengths_by_task=feature_lengths_by_task)
  return dataset.get_batches(mixture_or_task_name, num_images=num_images, image_size=image_size,
                             **kwargs)
