"""OWL-ST pseudo-labelling: a trained detector's boxes for each image's caption n-grams, kept by
score thresholds and written as a COCO detection file.

Files (each stage's output is the next one's input, and a user can open any of them):

* captions JSONL: ``{"image": path, "caption": text}`` per line (paths relative to the file);
* queries JSONL: the same plus ``"queries"`` (``palix.owl_st.ngrams.caption_ngrams``);
* ``annotations.json``: COCO ``images`` (with ``caption`` and ``queries``), ``annotations``
  (``bbox`` in pixels, ``score``) and ``categories`` (every query that labelled a box), read
  back by ``palix.tasks.box_tasks.CocoBoxSource`` for self-training; ``summary.json``: counts.

Per image, every token's box takes its best-scoring query; a box is kept when that score is at
least ``box_threshold``, and an image is kept when its best box reaches ``image_threshold``
(OWL-ST filters both; weak filtering keeps more data). Boxes of one query that overlap more than
``nms_iou`` are suppressed (the lower score goes), so one object does not become several
training targets. An image may keep at most ``max_boxes`` boxes (the best ones); how many were
over is counted in the summary. Queries beyond what the model takes at once are scored in
further passes (scores are per query, so this is exact).
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tqdm

from palix import generate
from palix import image_records
from palix.query_tokens import QueryTokenizer

Box = Tuple[float, float, float, float]  # normalised (ymin, xmin, ymax, xmax)


@dataclasses.dataclass(frozen=True)
class Thresholds:
  box_threshold: float = 0.1
  image_threshold: float = 0.3
  nms_iou: float = 0.5
  max_boxes: int = 16

  def __post_init__(self):
    for name in ("box_threshold", "image_threshold", "nms_iou"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
    if self.max_boxes < 1:
      raise ValueError(f"max_boxes must be >= 1; got {self.max_boxes}")


def read_jsonl(path: str, fields: Sequence[str]) -> List[dict]:
  """Records of a JSONL file with ``fields`` (``palix.image_records``: ``image`` resolved against
  the file's folder, ``where`` = ``'file:line'``)."""
  return image_records.read_image_records(path, fields)


def write_jsonl(path: str, records: Sequence[dict]) -> None:
  """Writes records (``image`` made relative to the file's folder; ``where`` dropped)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      out = {k: v for k, v in record.items() if k != "where"}
      out["image"] = os.path.relpath(os.path.abspath(record["image"]), folder)
      f.write(json.dumps(out) + "\n")


def box_iou(a: Box, b: Box) -> float:
  inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
           * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def select_boxes(boxes: np.ndarray, scores: np.ndarray, queries: Sequence[str],
                 thresholds: Thresholds) -> Tuple[List[Tuple[Box, str, float]], int]:
  """``(kept [(box, query, score)] best first, number over max_boxes)`` for one image from
  every token's ``boxes [P, 4]`` (yxyx) and ``scores [P, Q]``. Empty if the image fails
  ``image_threshold``."""
  best = np.argmax(scores, axis=1)
  best_score = scores[np.arange(len(best)), best]
  if best_score.size == 0 or best_score.max() < thresholds.image_threshold:
    return [], 0
  kept: List[Tuple[Box, str, float]] = []
  for token in np.argsort(-best_score, kind="stable"):
    score = float(best_score[token])
    if score < thresholds.box_threshold:
      break
    box = tuple(float(c) for c in np.clip(boxes[token], 0.0, 1.0))
    if box[2] <= box[0] or box[3] <= box[1]:
      continue  # no area: not a box COCO can hold
    label = queries[int(best[token])]
    if any(other == label and box_iou(box, b) > thresholds.nms_iou for b, other, _ in kept):
      continue
    kept.append((box, label, score))
  return kept[:thresholds.max_boxes], max(0, len(kept) - thresholds.max_boxes)


def detect_all_queries(model, params, tokenizer: QueryTokenizer, pixels: np.ndarray,
                       queries: Sequence[Sequence[str]], batch_size: int
                       ) -> List[Tuple[np.ndarray, np.ndarray]]:
  """Per image, ``(boxes [P, 4], scores [P, len(queries[i])])``; long query lists are split
  into passes of ``model.max_queries`` (rows of the same batch)."""
  per_pass = model.max_queries
  rows = [(i, start) for i, q in enumerate(queries) for start in range(0, len(q), per_pass)]
  boxes: Dict[int, np.ndarray] = {}
  scores: Dict[int, List[np.ndarray]] = {i: [] for i in range(len(queries))}
  for first in range(0, len(rows), batch_size):
    chunk = rows[first:first + batch_size]
    images = np.zeros((batch_size,) + pixels.shape[1:], np.float32)
    tokens = np.zeros((batch_size, per_pass, tokenizer.max_len), np.int32)
    for r, (i, start) in enumerate(chunk):
      images[r] = pixels[i]
      tokens[r] = tokenizer.encode(queries[i][start:start + per_pass], pad_to=per_pass)
    out = model.detect(params, images, tokens)
    out_boxes, out_scores = np.asarray(out["boxes"]), np.asarray(out["scores"])
    for r, (i, start) in enumerate(chunk):
      boxes[i] = out_boxes[r]
      scores[i].append(out_scores[r, :, :min(per_pass, len(queries[i]) - start)])
  return [(boxes[i], np.concatenate(scores[i], axis=1)) for i in range(len(queries))]


def pseudo_label(model, params, records: Sequence[dict], output_dir: str,
                 thresholds: Thresholds = Thresholds(), *, batch_size: int = 32,
                 vocabulary_path: Optional[str] = None, progress: bool = True) -> dict:
  """Runs the detector over ``records`` (``image``, ``caption``, ``queries``) and writes
  ``output_dir/annotations.json`` and ``summary.json``; returns the summary."""
  from palix.tasks import media_io  # pylint: disable=g-import-not-at-top  # Pillow only
  tokenizer = QueryTokenizer(model.max_query_len, vocabulary_path)
  os.makedirs(output_dir, exist_ok=True)
  images, annotations, categories = [], [], {}
  summary = {"images": len(records), "images_kept": 0, "boxes": 0, "boxes_over_max": 0,
             "queries": 0, "queries_too_long": 0, **dataclasses.asdict(thresholds)}
  bar = tqdm.tqdm(total=len(records), desc="pseudo-labels", disable=not progress)
  for first in range(0, len(records), batch_size):
    chunk = records[first:first + batch_size]
    pixels, sizes, queries = [], [], []
    for record in chunk:
      try:
        image = media_io.read_image(record["image"])
      except media_io.DataError as e:
        raise ValueError(f"{record['where']}: {e}") from e
      sizes.append(image.shape[:2])
      pixels.append(generate.load_image(image, model.image_size, record["where"]))
      usable = []
      for query in record["queries"]:
        try:
          tokenizer.ids(query)
          usable.append(query)
        except ValueError:  # longer than the model's queries: counted, not silently lost
          summary["queries_too_long"] += 1
      summary["queries"] += len(record["queries"])
      queries.append(usable)
    scored = detect_all_queries(model, params, tokenizer, np.stack(pixels), queries, batch_size)
    for record, (height, width), usable, (boxes, scores) in zip(chunk, sizes, queries, scored):
      if not usable:
        continue
      kept, over = select_boxes(boxes, scores, usable, thresholds)
      summary["boxes_over_max"] += over
      if not kept:
        continue
      image_id = len(images) + 1
      images.append({"id": image_id, "width": int(width), "height": int(height),
                     "file_name": os.path.relpath(os.path.abspath(record["image"]),
                                                  os.path.abspath(output_dir)),
                     "caption": record.get("caption", ""), "queries": list(usable)})
      for (ymin, xmin, ymax, xmax), label, score in kept:
        category = categories.setdefault(label, len(categories) + 1)
        bbox = [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height]
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": category, "bbox": [round(v, 2) for v in bbox],
                            "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                            "score": round(score, 4)})
    bar.update(len(chunk))
  bar.close()
  summary.update(images_kept=len(images), boxes=len(annotations), categories=len(categories))
  coco = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": name} for name, i in categories.items()]}
  with open(os.path.join(output_dir, "annotations.json"), "w", encoding="utf-8") as f:
    json.dump(coco, f)
  with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  return summary
