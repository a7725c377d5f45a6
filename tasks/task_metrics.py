"""What each built-in task is evaluated with: its seqio postprocessor and metric functions.

================================  =============================  ===================================
task                              postprocessor (targets)        metric functions
================================  =============================  ===================================
``easy_vqa``                      ``postprocessors.vqa``         ``vqa_accuracy`` (official VQA)
``easy_vqa_caption``              ``postprocessors.caption``     ``coco_caption_metrics``
``moving_shapes_caption``         ``postprocessors.caption``     ``coco_caption_metrics``
``shapes_detection``              ``postprocessors.detection``   ``coco_map_from_token_scores``
``moving_shapes_vqa``             (text)                         ``exact_match``
``fashion_mnist_caption``         (text)                         ``exact_match``,
                                                                 ``ZeroShotClassification``
``easy_vqa_episodes``             ``postprocessors.vqa``         ``vqa_accuracy`` (query answer)
``shape_names_3shot``             (text)                         ``exact_match``
``shape_names_0shot``             (text)                         ``exact_match``
================================  =============================  ===================================

The registry passes these to ``seqio.TaskRegistry.add`` (``metric_fns``, ``postprocess_fn``), so
``task.predict_metric_fns`` and friends are seqio's own. Your tasks declare theirs the same way:
``add_task(name, source, postprocess_fn=postprocessors.vqa, metric_fns=[vqa_accuracy])``.
"""

import dataclasses
import functools
from typing import Callable, Dict, Optional, Tuple

from palix.eval import aux_metrics
from palix.eval import postprocessors
from palix.eval.metrics import coco_caption_metrics, exact_match, vqa_accuracy
from palix.tasks.sources import fashion_mnist
from palix.tasks.sources import shapes_detection


@dataclasses.dataclass(frozen=True)
class TaskEvaluation:
  """A task's seqio ``postprocess_fn`` (None: texts as they are) and ``metric_fns``."""
  postprocess_fn: Optional[Callable]
  metric_fns: Tuple[Callable, ...]


VQA = TaskEvaluation(postprocessors.vqa, (vqa_accuracy,))
CAPTIONS = TaskEvaluation(postprocessors.caption, (coco_caption_metrics,))
EXACT_MATCH = TaskEvaluation(None, (exact_match,))

FASHION_MNIST_CAPTIONS = tuple(fashion_mnist.caption(k)
                               for k in range(len(fashion_mnist.CLASS_NAMES)))

BUILTIN_EVALUATION: Dict[str, TaskEvaluation] = {
    "easy_vqa": VQA,
    "easy_vqa_caption": CAPTIONS,
    "moving_shapes_caption": CAPTIONS,
    "shapes_detection": TaskEvaluation(
        postprocessors.detection,
        (functools.partial(aux_metrics.coco_map_from_token_scores,
                           label_names=shapes_detection.CLASSES),)),
    "moving_shapes_vqa": EXACT_MATCH,
    "fashion_mnist_caption": TaskEvaluation(
        None, (exact_match, aux_metrics.ZeroShotClassification(FASHION_MNIST_CAPTIONS))),
    "easy_vqa_episodes": VQA,  # the query's own answers pass through the episode
    "shape_names_3shot": EXACT_MATCH,
    "shape_names_0shot": EXACT_MATCH,
}
