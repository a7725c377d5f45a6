"""The batch source of detection tasks (OWL detector), for the trainer and ``palix infer``.

``box_batches`` has the signature of ``palix.tasks.dataset.get_batches`` (the seam described in
``palix.training.data``) and reads the tasks of ``palix.tasks.box_tasks`` through
``palix.tasks.box_batches`` (imported only when called). The OWL experiment files bind it::

  GET_BATCHES_FN = @box_data.box_batches
  box_data.box_batches.image_size = %IMAGE_SIZE
  box_data.box_batches.mosaic_sizes = (1, 2)

``coco_files`` adds COCO-format tasks from gin (e.g. OWL-ST pseudo-annotations):
``box_data.box_batches.coco_files = {'pseudo': {'train': '/path/annotations.json'}}``.
"""

from typing import Mapping, Optional

import gin


@gin.configurable
def box_batches(task_name: str, *, image_size: int = 128, mosaic_sizes=(1,),
                mosaic_probabilities=None, num_negatives: int = 8,
                vocabulary_path: Optional[str] = None,
                coco_files: Optional[Mapping[str, Mapping[str, str]]] = None, **kwargs):
  """``palix.tasks.box_batches.get_box_batches`` with its gin-bound options; ``coco_files`` maps
  task names to ``{split: annotations JSON}`` (``palix.tasks.box_tasks.CocoBoxSource``)."""
  # pylint: disable=g-import-not-at-top  # the data layer
  from palix.tasks import box_batches as box_batches_lib
  from palix.tasks import box_tasks
  sources = {name: box_tasks.CocoBoxSource(files) for name, files in (coco_files or {}).items()}
  return box_batches_lib.get_box_batches(
      task_name, image_size=image_size, mosaic_sizes=mosaic_sizes,
      mosaic_probabilities=mosaic_probabilities, num_negatives=num_negatives,
      vocabulary_path=vocabulary_path, sources=sources, **kwargs)
