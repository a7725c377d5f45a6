"""COCO-format detection files read as images with boxes (for the OWL detector).

The JSON has ``images`` (``id``, ``file_name``, ``width``, ``height``; an optional ``caption``
and ``queries``, the image's own texts, are kept), ``annotations`` (``id``, ``image_id``, ``bbox`` = ``[x, y, w, h]`` in pixels,
``category_id``; optional ``iscrowd`` and ``score``) and ``categories`` (``id``, ``name``); the
OWL-ST pseudo-labeller writes exactly this (``palix owl label``). Image files are found under
``image_dir`` (default: the JSON file's folder).

Every problem is an error that names the file and the annotation id (not only its position):
an unknown ``category_id`` or ``image_id``, a box without area, a box reaching more than
``border_tolerance`` pixels past the image (COCO's float rounding, which is clipped), an image
that cannot be read. Images without boxes stay (they teach the detector what is not an
object); crowd boxes (``iscrowd=1``) are not targets, and their count is logged.
"""

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from palix.tasks import media_io
from palix.tasks.sources import json_io

DataError = media_io.DataError


@dataclasses.dataclass(frozen=True)
class CocoImage:
  """One image of the file: its path, size, boxes (normalised yxyx) and their category names."""
  image_id: int
  path: str
  width: int
  height: int
  boxes: np.ndarray  # float32 [N, 4]
  labels: Tuple[str, ...]
  caption: str = ""
  queries: Tuple[str, ...] = ()  # the image's own text queries (OWL-ST: its caption n-grams)


def _annotation_name(annotation, k: int) -> str:
  ident = annotation.get("id") if isinstance(annotation, dict) else None
  return f"annotation id {ident} (annotations[{k}])" if ident is not None else f"annotations[{k}]"


def normalised_box(bbox, width: int, height: int, where: str,
                   border_tolerance: float = 1.0) -> Tuple[float, float, float, float]:
  """COCO ``[x, y, w, h]`` pixels -> ``(ymin, xmin, ymax, xmax)`` in [0, 1], checked."""
  if (not isinstance(bbox, list) or len(bbox) != 4
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
    raise DataError(f"{where}: bbox should be [x, y, w, h] numbers; got {bbox!r}")
  x, y, w, h = (float(v) for v in bbox)
  if w <= 0 or h <= 0:
    raise DataError(f"{where}: bbox {bbox} has no area")
  tol = border_tolerance
  if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
    raise DataError(f"{where}: bbox {bbox} lies outside the {width}x{height} image")
  clip = lambda v, hi: min(max(v, 0.0), hi)
  return (clip(y, height) / height, clip(x, width) / width,
          clip(y + h, height) / height, clip(x + w, width) / width)


def read_coco_boxes(json_path: str, image_dir: Optional[str] = None,
                    border_tolerance: float = 1.0, verify_images: bool = True
                    ) -> Tuple[List[CocoImage], Dict[int, str]]:
  """``(images sorted by id, {category id: name})`` of a COCO detection file (see above)."""
  data = json_io.read_json(json_path)
  image_dir = image_dir if image_dir is not None else os.path.dirname(os.path.abspath(json_path))
  categories: Dict[int, str] = {}
  for k, category in enumerate(json_io.field(data, "categories", list, json_path)):
    where = f"{json_path}: categories[{k}]"
    name = json_io.field(category, "name", str, where).strip()
    if not name:
      raise DataError(f"{where}: empty category name")
    categories[json_io.field(category, "id", int, where)] = name
  images = {}
  for k, image in enumerate(json_io.field(data, "images", list, json_path)):
    where = f"{json_path}: images[{k}]"
    image_id = json_io.field(image, "id", int, where)
    if image_id in images:
      raise DataError(f"{where}: image id {image_id} appears twice")
    width, height = (json_io.field(image, key, int, where) for key in ("width", "height"))
    if width < 1 or height < 1:
      raise DataError(f"{where}: image size {width}x{height} must be positive")
    caption = image.get("caption", "")
    queries = image.get("queries", [])
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
      raise DataError(f"{where}: 'queries' should be a list of texts; got {queries!r}")
    images[image_id] = (os.path.join(image_dir, json_io.field(image, "file_name", str, where)),
                        width, height, caption if isinstance(caption, str) else "",
                        tuple(queries))
  found: Dict[int, List[Tuple[Tuple[float, ...], str]]] = {i: [] for i in images}
  crowd = 0
  for k, annotation in enumerate(json_io.field(data, "annotations", list, json_path)):
    where = f"{json_path}: {_annotation_name(annotation, k)}"
    image_id = json_io.field(annotation, "image_id", int, where)
    if image_id not in images:
      raise DataError(f"{where}: image_id {image_id} is not in 'images'")
    category = json_io.field(annotation, "category_id", int, where)
    if category not in categories:
      raise DataError(f"{where}: category_id {category} is not in 'categories' (ids "
                      f"{sorted(categories)[:20]})")
    path, width, height = images[image_id][:3]
    box = normalised_box(json_io.field(annotation, "bbox", list, where), width, height,
                         f"{where} of {os.path.basename(path)}", border_tolerance)
    if annotation.get("iscrowd", 0):
      crowd += 1
      continue
    found[image_id].append((box, categories[category]))
  if crowd:
    logging.info("%s: %d crowd annotations (iscrowd=1) are not targets", json_path, crowd)
  out = []
  for image_id in sorted(images):
    path, width, height, caption, queries = images[image_id]
    if verify_images:
      try:
        media_io.verify_image(path)
      except DataError as e:
        raise DataError(f"{json_path}: image {image_id}: {e}") from e
    boxes = np.array([box for box, _ in found[image_id]], np.float32).reshape(-1, 4)
    out.append(CocoImage(image_id, path, width, height, boxes,
                         tuple(label for _, label in found[image_id]), caption, queries))
  return out, categories
