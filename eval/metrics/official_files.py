"""Read the official VQAv2 and COCO-captions JSON files into ``(targets, predictions)`` lists.

* VQAv2: the annotation file (``v2_mscoco_val2014_annotations.json``: ``{"annotations": [{
  "question_id", "answers": [{"answer"}, ...], "answer_type", "question_type"}, ...]}``) and a
  result file (``[{"question_id", "answer"}, ...]``). As in the official tool, the results must
  cover exactly the annotated questions.
* COCO captions: the annotation file (``captions_val2014.json``: ``{"annotations": [{"image_id",
  "caption"}, ...]}``) and a result file (``[{"image_id", "caption"}, ...]``, one caption per
  image). The images scored are those of the result file (as ``COCOEvalCap`` is usually run, with
  ``params["image_id"] = results.getImgIds()``).
"""

import json
from typing import Any, Dict, List, Tuple


def _load_json(path: str, what: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({what}): {e}") from e


def _result_list(path: str, id_key: str, value_key: str) -> Dict[int, str]:
  results = _load_json(path, "result file")
  if not isinstance(results, list):
    raise ValueError(f"{path}: a result file is a JSON list of {{'{id_key}', '{value_key}'}}")
  by_id = {}
  for position, entry in enumerate(results):
    if not isinstance(entry, dict) or id_key not in entry or value_key not in entry:
      raise ValueError(f"{path}: entry {position} needs '{id_key}' and '{value_key}'; "
                       f"got {entry!r}")
    if entry[id_key] in by_id:
      raise ValueError(f"{path}: {id_key} {entry[id_key]} appears twice (entry {position})")
    by_id[entry[id_key]] = entry[value_key]
  return by_id


def load_vqa_files(annotation_file: str,
                   result_file: str) -> Tuple[List[Dict[str, Any]], List[str], List[int]]:
  """``(targets, predictions, question_ids)`` for :func:`palix.eval.metrics.vqa_accuracy`."""
  annotations = _load_json(annotation_file, "VQA annotations").get("annotations")
  if not isinstance(annotations, list):
    raise ValueError(f"{annotation_file}: expected {{'annotations': [...]}} "
                     "(a VQA annotation file)")
  answers = _result_list(result_file, "question_id", "answer")
  annotated = {a["question_id"] for a in annotations}
  if set(answers) != annotated:
    raise ValueError(
        f"{result_file}: results do not correspond to {annotation_file}: "
        f"{len(annotated - set(answers))} annotated questions have no answer and "
        f"{len(set(answers) - annotated)} answered questions are not annotated")
  targets, predictions, question_ids = [], [], []
  for a in annotations:
    targets.append({"answers": [h["answer"] for h in a["answers"]],
                    "answer_type": a.get("answer_type"), "question_type": a.get("question_type")})
    predictions.append(answers[a["question_id"]])
    question_ids.append(a["question_id"])
  return targets, predictions, question_ids


def load_coco_caption_files(annotation_file: str,
                            result_file: str) -> Tuple[List[List[str]], List[str], List[int]]:
  """``(targets, predictions, image_ids)`` for :func:`palix.eval.metrics.coco_caption_metrics`."""
  annotations = _load_json(annotation_file, "COCO caption annotations").get("annotations")
  if not isinstance(annotations, list):
    raise ValueError(f"{annotation_file}: expected {{'annotations': [...]}} (COCO captions)")
  references: Dict[int, List[str]] = {}
  for a in annotations:
    references.setdefault(a["image_id"], []).append(a["caption"])
  captions = _result_list(result_file, "image_id", "caption")
  unknown = [i for i in captions if i not in references]
  if unknown:
    raise ValueError(f"{result_file}: {len(unknown)} image ids have no reference captions in "
                     f"{annotation_file} (first: {unknown[0]})")
  image_ids = list(captions)
  return [references[i] for i in image_ids], [captions[i] for i in image_ids], image_ids
