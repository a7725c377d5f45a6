"""Your own data: one JSON object per line, media paths relative to the JSONL file.

Fields of a line:

* media, exactly one of: ``"image": "a.png"``, ``"images": ["a.png", "b.png"]`` (several images,
  e.g. few-shot), ``"video": "clip.mp4"`` or ``"video": "frames_dir/"`` (``num_frames`` frames
  sampled uniformly);
* ``"prefix"``: the prompt (e.g. ``"caption en"``, ``"answer en what is this?"``);
* ``"suffix"``: the target text; or instead, for detection, ``"boxes"`` (a list of
  ``[ymin, xmin, ymax, xmax]`` normalised to [0, 1]) with ``"labels"`` (same length): the target
  becomes ``<loc..>x4 label ; ...`` and the prefix defaults to ``detect {labels}``;
* optional ``"id"``: used in error messages instead of ``file:line``.

Every line of a file must use the same media kind. Blank lines are ignored. Errors name
``file:line``.
"""

import json
import os
from typing import Iterator, Mapping

from palix.tasks import prompts
from palix.tasks.sources import base

MEDIA_FIELDS = ("image", "images", "video")


class JsonlSource(base.TableSource):
  """Args: files: ``{split: path to .jsonl}``; num_frames for video lines; TableSource options."""

  def __init__(self, files: Mapping[str, str], **kwargs):
    super().__init__(tuple(files), **kwargs)
    self.files = dict(files)

  def _iter_records(self, split: str) -> Iterator[base.RecordOrError]:
    path = self.files[split]
    if not os.path.isfile(path):
      raise base.DataError(f"{path}: JSONL file not found")
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, "r", encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        where = f"{path}:{number}"
        try:
          yield self._record(line, where, folder)
        except base.DataError as e:
          yield e

  def _record(self, line: str, where: str, folder: str) -> base.Record:
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise base.DataError(f"{where}: malformed JSON ({e.msg}, column {e.colno})") from e
    if not isinstance(entry, dict):
      raise base.DataError(f"{where}: a line must be a JSON object, got {type(entry).__name__}")
    if "id" in entry:
      where = f"{where} (id {entry['id']})"
    media = [k for k in MEDIA_FIELDS if k in entry]
    if len(media) != 1:
      raise base.DataError(f"{where}: needs exactly one of {MEDIA_FIELDS}; got {media or 'none'}")
    resolve = lambda p: os.path.join(folder, _string(p, media[0], where))
    image_paths, video = (), ""
    if media[0] == "image":
      image_paths = (resolve(entry["image"]),)
    elif media[0] == "images":
      if not isinstance(entry["images"], list) or not entry["images"]:
        raise base.DataError(f"{where}: 'images' must be a non-empty list of paths")
      image_paths = tuple(resolve(p) for p in entry["images"])
    else:
      video = resolve(entry["video"])
    prefix, suffix = self._text(entry, where)
    return base.Record(prefix, suffix, where, image_paths=image_paths, video_path=video)

  @staticmethod
  def _text(entry, where):
    if "boxes" in entry or "labels" in entry:
      if "suffix" in entry:
        raise base.DataError(f"{where}: give either 'suffix' or 'boxes'+'labels', not both")
      boxes, labels = entry.get("boxes"), entry.get("labels")
      if not isinstance(boxes, list) or not isinstance(labels, list) or len(boxes) != len(labels):
        raise base.DataError(f"{where}: 'boxes' and 'labels' must be lists of equal length")
      for k, box in enumerate(boxes):
        if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in box)):
          raise base.DataError(f"{where}: boxes[{k}] should be [ymin, xmin, ymax, xmax]; got {box}")
        if min(box) < 0 or max(box) > 1:
          raise base.DataError(f"{where}: boxes[{k}] = {box} lies outside the image (coordinates "
                               "are normalised to [0, 1])")
        if box[0] > box[2] or box[1] > box[3]:
          raise base.DataError(f"{where}: boxes[{k}] = {box} has ymin > ymax or xmin > xmax")
      labels = [_string(label, "labels", where).strip() for label in labels]
      if not all(labels) or any(";" in label for label in labels):
        raise base.DataError(f"{where}: labels must be non-empty and contain no ';'")
      suffix = prompts.detection_target(boxes, labels) if boxes else ""
      prefix = entry.get("prefix", prompts.detection_prompt(labels) if labels else "")
    else:
      suffix = _string(entry.get("suffix", ""), "suffix", where)
      prefix = entry.get("prefix", "")
    prefix = _string(prefix, "prefix", where)
    if not prefix.strip():
      raise base.DataError(f"{where}: missing or empty 'prefix' (the prompt)")
    return prefix, suffix


def _string(value, name: str, where: str) -> str:
  if not isinstance(value, str):
    raise base.DataError(f"{where}: {name!r} should be a string, got {json.dumps(value)}")
  return value
