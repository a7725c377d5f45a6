"""The batch source of image classification tasks, for the trainer and ``palix infer``.

``class_batches`` has the signature of ``palix.tasks.dataset.get_batches`` (the seam described in
``palix.training.data``) and reads the tasks of ``palix.tasks.class_tasks`` through
``palix.tasks.class_batches`` (TensorFlow is imported only when it is called). Bind it with
``GET_BATCHES_FN = @class_data.class_batches`` after the run file (the classifier experiment files
do), and its options in the model file::

  class_data.class_batches.image_size = %IMAGE_SIZE

NaViT's packed batches: ``class_data.class_batches.packing = @packing.PackingOptions()``, with
``packing.PackingOptions``, ``packing.Resolution`` and ``packing.TokenDropping`` (the plain
dataclasses of ``palix.tasks.packing``, TensorFlow-free) configurable here.
"""

from typing import Optional

import gin

from palix.tasks import packing as packing_lib

for _options in (packing_lib.PackingOptions, packing_lib.Resolution, packing_lib.TokenDropping):
  gin.external_configurable(_options, module="packing")


@gin.configurable
def class_batches(task_name: str, *, image_size: int = 224, resize_mode: str = "stretch",
                  packing: Optional[packing_lib.PackingOptions] = None, **kwargs):
  """``palix.tasks.class_batches.get_class_batches`` with gin-bound ``image_size``,
  ``resize_mode`` (``stretch`` or ``pad``) and ``packing`` (None: square images)."""
  from palix.tasks import class_batches as class_batches_lib  # pylint: disable=g-import-not-at-top
  return class_batches_lib.get_class_batches(task_name, image_size=image_size,
                                             resize_mode=resize_mode, packing=packing, **kwargs)
