"""Registering palix tasks and mixtures with seqio, and the built-in ones.

Built-ins register on first use (:func:`ensure_registered`, called by ``get_batches``,
``get_task_or_mixture`` and ``list_tasks``), not at import. Each built-in is declared once, in one
``BUILTIN_TASKS`` entry: its source, media preprocessing, seqio ``postprocess_fn`` and
``metric_fns`` (as one ``seqio.TaskRegistry.add`` statement declares a task).

Your own task: ``add_task('my_task', JsonlSource({'train': 'data/train.jsonl'}))`` (see
``docs/data.md``).
"""

import dataclasses
import functools
import itertools
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

import seqio

from palix.eval import aux_metrics
from palix.eval import postprocessors
from palix.eval.metrics import coco_caption_metrics, exact_match, vqa_accuracy
from palix.tasks import preprocessors
from palix.tasks.sources import base
from palix.tasks.sources import easy_vqa
from palix.tasks.sources import episodes
from palix.tasks.sources import fashion_mnist
from palix.tasks.sources import moving_shapes
from palix.tasks.sources import shapes_captions
from palix.tasks.sources import shapes_detection


def add_task(name: str, source: base.ExampleSource,
             media: Optional[preprocessors.DecodeMedia] = None,
             metric_fns: Sequence[Callable] = (), postprocess_fn: Optional[Callable] = None,
             vocabulary: Optional[seqio.Vocabulary] = None, replace: bool = False) -> seqio.Task:
  """Registers a palix task: ``source`` -> DecodeMedia -> tokenize -> append EOS.

  Args:
    name: task name (letters, digits, ``_.:#``).
    source: any :class:`palix.tasks.sources.base.ExampleSource`.
    media: image/video preprocessing (resize mode, training crop and flip, video frames).
    metric_fns: seqio metric functions ``(targets, predictions) -> {name: value}``.
    postprocess_fn: seqio postprocessor of decoded text (e.g. parsing detections).
    vocabulary: defaults to the committed palix SentencePiece model.
    replace: re-register a name that exists (tests, notebooks).
  """
  if isinstance(source, base.TableSource):
    if media is None:
      media = preprocessors.DecodeMedia(num_frames=source.num_frames)
    elif media.num_frames != source.num_frames:
      raise ValueError(f"task {name!r}: the source samples {source.num_frames} frames per clip but "
                       f"DecodeMedia has num_frames={media.num_frames}; give both the same value")
  if replace:
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, output_features=preprocessors.output_features(vocabulary),
      preprocessors=preprocessors.default_preprocessors(media), postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns), shuffle_buffer_size=1000)


def add_mixture(name: str, tasks_and_rates: Sequence[Tuple[str, float]],
                replace: bool = False) -> seqio.Mixture:
  """Registers a mixture of palix tasks with relative rates (see ``palix.tasks.schedule``)."""
  if replace:
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks_and_rates))


@dataclasses.dataclass(frozen=True)
class BuiltinTask:
  """A built-in task's whole declaration (the arguments of :func:`add_task`).

  Attributes:
    make_source: builds the source (called when the task registers).
    media: image/video preprocessing.
    description: one line for ``palix data list``.
    postprocess_fn, metric_fns: what evaluation applies (seqio's fields; ``palix.eval``).
  """
  make_source: Callable[[], base.ExampleSource]
  media: preprocessors.DecodeMedia
  description: str = ""
  postprocess_fn: Optional[Callable] = None
  metric_fns: Tuple[Callable, ...] = ()


MOVING_SHAPES_FRAMES = 6
# Metric functions shared by several built-ins.
VQA = dict(postprocess_fn=postprocessors.vqa, metric_fns=(vqa_accuracy,))
CAPTIONS = dict(postprocess_fn=postprocessors.caption, metric_fns=(coco_caption_metrics,))
EXACT_MATCH = dict(metric_fns=(exact_match,))


BUILTIN_TASKS: Dict[str, BuiltinTask] = {
    "easy_vqa": BuiltinTask(
        lambda: easy_vqa.EasyVqaSource("vqa"), preprocessors.DecodeMedia(flip=True),
        description="easy-VQA questions (PyPI easy-vqa), 64x64 shapes", **VQA),
    "easy_vqa_caption": BuiltinTask(
        lambda: easy_vqa.EasyVqaSource("caption"), preprocessors.DecodeMedia(flip=True),
        description="'a blue circle' captions derived from easy-VQA labels", **CAPTIONS),
    "fashion_mnist_caption": BuiltinTask(
        fashion_mnist.FashionMnistCaptionSource,
        preprocessors.DecodeMedia(crop_min_scale=0.85, flip=True),
        description="'a photo of a trouser' (Debian dataset-fashion-mnist)",
        metric_fns=(exact_match, aux_metrics.ZeroShotClassification(tuple(
            fashion_mnist.caption(k) for k in range(len(fashion_mnist.CLASS_NAMES)))))),
    "shapes_detection": BuiltinTask(
        shapes_detection.ShapesDetectionSource, preprocessors.DecodeMedia(),
        description="2-4 easy-VQA shapes / Fashion-MNIST items per 128px canvas, exact boxes",
        postprocess_fn=postprocessors.detection,
        metric_fns=(functools.partial(aux_metrics.coco_map_from_token_scores,
                                      label_names=shapes_detection.CLASSES),)),
    "shapes_captions": BuiltinTask(
        shapes_captions.ShapesCaptionSource, preprocessors.DecodeMedia(),
        description="1-4 objects per 128px canvas, a caption naming them (OWL-ST, docs/owl.md)"),
    "moving_shapes_vqa": BuiltinTask(
        lambda: moving_shapes.MovingShapesSource("vqa", num_frames=MOVING_SHAPES_FRAMES),
        preprocessors.DecodeMedia(),
        description=f"{MOVING_SHAPES_FRAMES}-frame clips: which way does the shape move?",
        **EXACT_MATCH),
    "moving_shapes_caption": BuiltinTask(
        lambda: moving_shapes.MovingShapesSource("caption", num_frames=MOVING_SHAPES_FRAMES),
        preprocessors.DecodeMedia(),
        description=f"{MOVING_SHAPES_FRAMES}-frame clips: 'a red circle moving left'", **CAPTIONS),
    # Few-shot episodes (images [shot_1, ..., shot_k, query], text joined by <sep>):
    "easy_vqa_episodes": BuiltinTask(
        lambda: episodes.EpisodeSource(easy_vqa.EasyVqaSource("vqa"), shots=2,
                                       name="easy_vqa_episodes"),
        preprocessors.DecodeMedia(),
        description="2-shot easy-VQA: 2 solved questions, then the query (3 images)",
        **VQA),  # the query's own answers pass through the episode
    "shape_names_3shot": BuiltinTask(
        lambda: episodes.RemappedShapeNamesSource(shots=3), preprocessors.DecodeMedia(),
        description="in-context shape names: 3 shots fix this episode's words (4 images)",
        **EXACT_MATCH),
    "shape_names_0shot": BuiltinTask(
        lambda: episodes.RemappedShapeNamesSource(shots=0), preprocessors.DecodeMedia(),
        description="shape_names_3shot's queries without the context (chance baseline)",
        **EXACT_MATCH),
}

# Few-shot episodes built from other tasks' examples (several images per example).
EPISODE_TASKS = ("easy_vqa_episodes", "shape_names_3shot", "shape_names_0shot")

BUILTIN_MIXTURES: Dict[str, Tuple[Tuple[str, float], ...]] = {
    # easy-VQA: questions and derived captions (the input-pipeline benchmark uses this one).
    "easy_vqa_mix": (("easy_vqa", 3.0), ("easy_vqa_caption", 1.0)),
    # In-context learning: episodes, plus captions of the same images so that the encoder learns
    # to see shapes (the episodes alone supervise shape only through the remapped words).
    "shape_names_mix": (("shape_names_3shot", 2.0), ("easy_vqa_caption", 1.0)),
    # Evaluation of in-context learning: the same queries with and without their 3 shots.
    "shape_names_eval": (("shape_names_3shot", 1.0), ("shape_names_0shot", 1.0)),
    # Everything embedded; needs num_images >= MOVING_SHAPES_FRAMES for the video tasks. How the
    # rates were chosen (captions weigh twice the questions): docs/performance.md, "make demo".
    "embedded_mix": (("easy_vqa", 3.0), ("easy_vqa_caption", 6.0), ("fashion_mnist_caption", 1.0),
                     ("shapes_detection", 2.0), ("moving_shapes_vqa", 2.0),
                     ("moving_shapes_caption", 1.0), ("shape_names_3shot", 1.0)),
}
# What `make demo` evaluates: embedded_mix's tasks plus the 0-shot chance baseline of the few-shot
# task (never trained on: its answers are unknowable without the shots).
BUILTIN_MIXTURES["embedded_eval_mix"] = tuple(
    (task, 1.0) for task, _ in BUILTIN_MIXTURES["embedded_mix"]) + (("shape_names_0shot", 1.0),)

_LOCK = threading.Lock()
_REGISTERED = []


def ensure_registered() -> None:
  """Registers the built-in tasks and mixtures once per process (names already taken are kept)."""
  with _LOCK:
    if _REGISTERED:
      return
    for name, spec in BUILTIN_TASKS.items():
      if name not in seqio.TaskRegistry.names():
        add_task(name, spec.make_source(), spec.media, metric_fns=spec.metric_fns,
                 postprocess_fn=spec.postprocess_fn)
    for name, members in BUILTIN_MIXTURES.items():
      if name not in seqio.MixtureRegistry.names():
        add_mixture(name, members)
    _REGISTERED.append(True)


def builtin_text(task_names: Optional[Sequence[str]] = None, split: str = "train",
                 max_examples: Optional[int] = None):
  """``(inputs, targets)`` of built-in tasks' split, without registering anything (vocab training).

  ``max_examples`` caps the examples read per generated task (they render pixels to get text);
  file-based tasks are read in full.
  """
  # Episodes only recombine their base tasks' text, so the default leaves them out.
  for name in task_names or [n for n in BUILTIN_TASKS if n not in EPISODE_TASKS]:
    if name not in BUILTIN_TASKS:
      raise ValueError(f"{name!r} is not a built-in task; built-ins: {list(BUILTIN_TASKS)}")
    source = BUILTIN_TASKS[name].make_source()
    cap = max_examples if isinstance(source, base.PythonSource) else None
    yield from itertools.islice(source.text_pairs(split), cap)
