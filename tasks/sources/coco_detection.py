"""COCO detection in its own format (``instances_val2017.json``) plus an image folder.

The JSON has ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``image_id``, ``bbox`` = ``[x, y, w, h]`` in pixels, ``category_id``, ``iscrowd``) and
``categories`` (``id``, ``name``). One example per image:

* prompt ``detect {a} ; {b}`` with the categories present, sorted by name;
* target ``detection_target`` of the boxes, normalised ``(ymin, xmin, ymax, xmax)``, ordered by
  category (prompt order) then top, left.

Rules (reported as load notes, never silent): crowd annotations (``iscrowd=1``) are not targets;
images without any other annotation give no example. A box reaching past the image border by at
most ``border_tolerance`` pixels (COCO's float rounding) is clipped; further out is an error
naming the file and annotation. Every example carries ``image_id``.
"""

import os
from typing import Dict, Iterator, List, Mapping, Tuple

from palix.tasks import prompts
from palix.tasks.sources import base
from palix.tasks.sources import coco_boxes
from palix.tasks.sources import json_io


class CocoDetectionSource(base.TableSource):
  """Args: files: ``{split: (instances json, image folder)}``; border_tolerance (pixels)."""

  def __init__(self, files: Mapping[str, Tuple[str, str]], border_tolerance: float = 1.0,
               **kwargs):
    super().__init__(tuple(files), **kwargs)
    self.files, self.border_tolerance = dict(files), border_tolerance

  def _iter_records(self, split: str) -> Iterator[base.RecordOrError]:
    json_path, image_dir = self.files[split]
    data = json_io.read_json(json_path)
    categories = {}
    for k, category in enumerate(json_io.field(data, "categories", list, json_path)):
      where = f"{json_path}: categories[{k}]"
      categories[json_io.field(category, "id", int, where)] = json_io.field(
          category, "name", str, where).strip()
    images = {}
    for k, image in enumerate(json_io.field(data, "images", list, json_path)):
      where = f"{json_path}: images[{k}]"
      images[json_io.field(image, "id", int, where)] = (
          json_io.field(image, "file_name", str, where),
          json_io.field(image, "width", int, where), json_io.field(image, "height", int, where))
    objects: Dict[int, List[Tuple[Tuple[float, ...], str]]] = {}
    bad_images: Dict[int, base.DataError] = {}
    crowd = 0
    for k, annotation in enumerate(json_io.field(data, "annotations", list, json_path)):
      where = f"{json_path}: annotations[{k}]"
      try:
        image_id = json_io.field(annotation, "image_id", int, where)
        if image_id not in images:
          raise base.DataError(f"{where}: image_id {image_id} is not in 'images'")
        if annotation.get("iscrowd", 0):
          crowd += 1
          continue
        category = json_io.field(annotation, "category_id", int, where)
        if category not in categories:
          raise base.DataError(f"{where}: category_id {category} is not in 'categories'")
        box = self._normalised_box(json_io.field(annotation, "bbox", list, where),
                                   images[image_id], where)
      except base.DataError as e:
        if "image_id" in annotation and annotation["image_id"] in images:
          bad_images.setdefault(annotation["image_id"], e)
        else:
          yield e
        continue
      objects.setdefault(image_id, []).append((box, categories[category]))
    for image_id in sorted(images):
      file_name = images[image_id][0]
      if image_id in bad_images:
        yield bad_images[image_id]
      elif image_id in objects:
        yield self._record(image_id, objects[image_id], os.path.join(image_dir, file_name),
                           f"{json_path}: image {image_id} ({file_name})")
    if crowd:
      self.note(f"{crowd} crowd annotations (iscrowd=1) of {json_path} are not targets")
    without = sum(1 for i in images if i not in objects and i not in bad_images)
    if without:
      self.note(f"{without} images of {json_path} have no non-crowd box and give no example")

  def _normalised_box(self, bbox, image, where) -> Tuple[float, float, float, float]:
    file_name, width, height = image
    return coco_boxes.normalised_box(bbox, width, height, f"{where} of {file_name}",
                                     self.border_tolerance)

  @staticmethod
  def _record(image_id, found, path, where) -> base.Record:
    classes = sorted({label for _, label in found})
    order = {c: k for k, c in enumerate(classes)}
    found = sorted(found, key=lambda item: (order[item[1]], item[0][0], item[0][1]))
    target = prompts.detection_target([box for box, _ in found], [label for _, label in found])
    return base.Record(prompts.detection_prompt(classes), target, where, image_paths=(path,),
                       extras={"image_id": (str(image_id),)})
