"""The batch-source seam between the trainer and the data layer.

A batch source is any callable with the signature of ``palix.tasks.dataset.get_batches``::

  fn(mixture_or_task_name, *, split, batch_size, feature_lengths, seed, shuffle, repeat,
     start_step, shard_index, num_shards) -> Iterator[Dict[str, np.ndarray]]

(plus its own gin-bound options such as ``image_size`` and ``num_images``). ``batch_size`` is the
number of rows *this shard* yields; ``start_step=k`` starts at batch ``k``. The run files inject
``task_batches`` (SeqIO tasks; TensorFlow is imported only when it is called) and tests inject
``palix.training.synthetic_data.synthetic_batches``.
"""

import gin


@gin.configurable
def task_batches(mixture_or_task_name: str, *, num_images: int = 1, image_size: int = 224,
                 **kwargs):
  """``palix.tasks.dataset.get_batches`` (imported lazily: it pulls in TensorFlow and SeqIO)."""
  from palix.tasks import dataset  # pylint: disable=g-import-not-at-top
  return dataset.get_batches(mixture_or_task_name, num_images=num_images, image_size=image_size,
                             **kwargs)
