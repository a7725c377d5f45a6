"""COCO captions in their own format (``captions_train2017.json``) plus an image folder.

The JSON has ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``, ``caption``).
By default there is one example per caption (training). With ``per_image=True`` there is one per
image: the target is its first caption and the ``references`` feature holds all of them (padded
with empty strings to the largest count in the split) for caption metrics.
Every example carries ``image_id`` (as a string).
"""

import os
from typing import Dict, Iterator, List, Mapping, Tuple

from palix.tasks import prompts
from palix.tasks.sources import base
from palix.tasks.sources import json_io


class CocoCaptionsSource(base.TableSource):
  """Args: files: ``{split: (captions json, image folder)}``; per_image; prompt."""

  def __init__(self, files: Mapping[str, Tuple[str, str]], per_image: bool = False,
               prompt: str = prompts.caption_prompt(), **kwargs):
    super().__init__(tuple(files), **kwargs)
    self.files, self.per_image, self.prompt = dict(files), per_image, prompt

  def _iter_records(self, split: str) -> Iterator[base.RecordOrError]:
    json_path, image_dir = self.files[split]
    data = json_io.read_json(json_path)
    images = json_io.field(data, "images", list, json_path)
    annotations = json_io.field(data, "annotations", list, json_path)
    paths: Dict[int, str] = {}
    for k, image in enumerate(images):
      where = f"{json_path}: images[{k}]"
      image_id = json_io.field(image, "id", int, where)
      paths[image_id] = os.path.join(image_dir, json_io.field(image, "file_name", str, where))
    captions: Dict[int, List[Tuple[str, str]]] = {}
    for k, annotation in enumerate(annotations):
      where = f"{json_path}: annotations[{k}]"
      try:
        image_id = json_io.field(annotation, "image_id", int, where)
        caption = json_io.field(annotation, "caption", str, where)
        if image_id not in paths:
          raise base.DataError(f"{where}: image_id {image_id} is not in 'images'")
      except base.DataError as e:
        yield e
        continue
      if not self.per_image:
        yield base.Record(self.prompt, caption.strip(), where, image_paths=(paths[image_id],),
                          extras={"image_id": (str(image_id),)})
      captions.setdefault(image_id, []).append((caption.strip(), where))
    if self.per_image:
      width = max((len(c) for c in captions.values()), default=0)
      for image_id in sorted(captions):
        texts = [text for text, _ in captions[image_id]]
        yield base.Record(self.prompt, texts[0], captions[image_id][0][1],
                          image_paths=(paths[image_id],),
                          extras={"image_id": (str(image_id),),
                                  "references": tuple(texts + [""] * (width - len(texts)))})
    without = len(paths) - len(captions)
    if without:
      self.note(f"{without} images of {json_path} have no caption and give no example")
