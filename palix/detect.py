"""Open-vocabulary detection from Python: an image and free-text queries -> scored boxes.

    detector = Detector.from_checkpoint(["models/owl/owl_tiny.gin"], "/tmp/owl/detector")
    for d in detector.detect("canvas.png", ["bag", "red triangle"]):
      print(d.label, round(d.score, 2), d.box)

A detection is a box (normalised ``ymin, xmin, ymax, xmax``), the query that found it and its
score ``sigmoid(logit)`` in [0, 1]. Every image token proposes one box per query; ``detect``
keeps those scoring at least ``score_threshold``, best first (at most ``max_detections``). Images
are read and resized as in ``palix.generate`` (a path, a PIL image or an ``[H, W, 3]`` array).

``palix infer`` runs the same through ``gin/runs/detect.gin`` (docs/owl.md). Bad input is an
error naming it: no queries, more than the model takes, a query too long, an unreadable image.
"""

import dataclasses
import json
import os
from typing import List, Optional, Sequence

import gin
import numpy as np

from palix import generate
from palix.query_tokens import QueryTokenizer


@dataclasses.dataclass(frozen=True)
class Detection:
  box: tuple  # normalised (ymin, xmin, ymax, xmax)
  label: str  # the query
  score: float  # sigmoid of the (token, query) logit

  def pixel_box(self, height: int, width: int) -> tuple:
    """``(xmin, ymin, xmax, ymax)`` in pixels of an image of that size (PIL's order)."""
    ymin, xmin, ymax, xmax = self.box
    return (xmin * width, ymin * height, xmax * width, ymax * height)


class Detector:
  """Queries an ``OwlModel`` (see the module docstring).

  Args:
    model: a ``palix.models.owl.OwlModel``; ``max_queries`` and ``max_query_len`` bound queries.
    params: its parameters.
    vocabulary_path: SentencePiece model of the queries (default: palix's).
  """

  def __init__(self, model, params, vocabulary_path: Optional[str] = None):
    self.model, self.params = model, params
    self.tokenizer = QueryTokenizer(model.max_query_len, vocabulary_path)

  @classmethod
  def from_checkpoint(cls, gin_files: Sequence[str], checkpoint_path: str,
                      gin_bindings: Sequence[str] = ()):
    """Parses the model's gin files (they bind ``MODEL``) and loads ``checkpoint_path``."""
    from palix import config as palix_config  # pylint: disable=g-import-not-at-top
    palix_config.parse_gin(["runs/detect.gin", *gin_files],
                           [*gin_bindings, f"CHECKPOINT_PATH = {checkpoint_path!r}"],
                           finalize=False)
    return load_detector()

  def detect_images(self, images: Sequence, queries: Sequence[str], *,
                    score_threshold: float = 0.1, max_detections: int = 20
                    ) -> List[List[Detection]]:
    """``detect`` for several images, in one batch."""
    if not 0.0 <= score_threshold <= 1.0:
      raise ValueError(f"score_threshold must be in [0, 1]; got {score_threshold}")
    queries = list(queries) if not isinstance(queries, str) else queries
    tokens = self.tokenizer.encode(queries, self.model.max_queries, where="queries")
    pixels = np.stack([generate.load_image(image, self.model.image_size, f"images[{i}]")
                       for i, image in enumerate(images)]).astype(np.float32)
    out = self.model.detect(self.params, pixels, np.repeat(tokens[None], len(pixels), 0))
    boxes, scores = np.asarray(out["boxes"]), np.asarray(out["scores"])
    results = []
    for b in range(len(pixels)):
      flat = scores[b].reshape(-1)
      order = np.argsort(-flat, kind="stable")[:max_detections]
      found = []
      for k in order:
        if flat[k] < score_threshold:
          break
        token, query = divmod(int(k), len(queries))
        found.append(Detection(tuple(float(c) for c in np.clip(boxes[b, token], 0.0, 1.0)),
                               queries[query], float(flat[k])))
      results.append(found)
    return results

  def detect(self, image, queries: Sequence[str], *, score_threshold: float = 0.1,
             max_detections: int = 20) -> List[Detection]:
    """Boxes for the text ``queries`` in ``image``, best first."""
    return self.detect_images([image], queries, score_threshold=score_threshold,
                              max_detections=max_detections)[0]


@gin.configurable
def load_detector(model=gin.REQUIRED, checkpoint_path: str = gin.REQUIRED,
                  vocabulary_path: Optional[str] = None) -> Detector:
  """A :class:`Detector` for ``model`` with the parameters of ``checkpoint_path``."""
  # pylint: disable=g-import-not-at-top
  from palix import partitioning
  from palix.training import checkpoints
  shapes = model.input_shapes(1)
  types = {k: np.float32 if k == "images" else np.int32 for k in shapes}
  params = checkpoints.load_model_params(model, checkpoint_path, partitioning.Partitioner(),
                                         shapes, types)
  return Detector(model, params, vocabulary_path)


@gin.configurable
def detect_job(image: str = gin.REQUIRED, queries: Sequence[str] = gin.REQUIRED,
               score_threshold: float = 0.1, max_detections: int = 20,
               output_png: Optional[str] = None) -> dict:
  """``palix infer`` with ``runs/detect.gin``: detections of one image as a JSON-able dict;
  ``output_png`` also draws them (``palix.eval.report``'s box drawing)."""
  detector = load_detector()
  found = detector.detect(image, queries, score_threshold=score_threshold,
                          max_detections=max_detections)
  result = {"image": image, "queries": list(queries),
            "detections": [{"label": d.label, "score": round(d.score, 4),
                            "box": [round(c, 4) for c in d.box]} for d in found]}
  if output_png:
    from palix.eval.report import images as report_images  # pylint: disable=g-import-not-at-top
    from palix.tasks import media_io  # pylint: disable=g-import-not-at-top  # Pillow only
    os.makedirs(os.path.dirname(os.path.abspath(output_png)), exist_ok=True)
    report_images.render_png(0, media_io.read_image(image), output_png,
                             predicted_boxes=[report_images.ReportBox(d.box, d.label, d.score)
                                              for d in found])
    result["output_png"] = output_png
  return json.loads(json.dumps(result))
