"""VQAv2 in its own format: a questions JSON, an annotations JSON and the COCO image folder.

Questions file: ``{"data_subtype": "val2014", "questions": [{"image_id", "question",
"question_id"}, ...]}``. Annotations file: ``{"annotations": [{"question_id", "image_id",
"answers": [10 x {"answer", "answer_confidence", "answer_id"}], "multiple_choice_answer",
"answer_type", "question_type"}, ...]}``. Images are found with ``image_pattern`` (default
``COCO_{data_subtype}_{image_id:012d}.jpg``).

Example: ``answer en {question}`` -> ``multiple_choice_answer``. Extra features for the VQA
accuracy metric: ``answers`` (the ten human answers), ``answer_type``, ``question_id``,
``image_id`` (strings).
"""

import os
from typing import Iterator, Mapping, Tuple

from palix.tasks import prompts
from palix.tasks.sources import base
from palix.tasks.sources import json_io

NUM_ANSWERS = 10
DEFAULT_IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


class Vqav2Source(base.TableSource):
  """Args: files: ``{split: (questions json, annotations json, image folder)}``; image_pattern."""

  def __init__(self, files: Mapping[str, Tuple[str, str, str]],
               image_pattern: str = DEFAULT_IMAGE_PATTERN, **kwargs):
    super().__init__(tuple(files), **kwargs)
    self.files, self.image_pattern = dict(files), image_pattern

  def _iter_records(self, split: str) -> Iterator[base.RecordOrError]:
    questions_path, annotations_path, image_dir = self.files[split]
    questions_data = json_io.read_json(questions_path)
    questions = json_io.field(questions_data, "questions", list, questions_path)
    subtype = questions_data.get("data_subtype", "")
    annotations = json_io.field(json_io.read_json(annotations_path), "annotations", list,
                                annotations_path)
    by_question = {}
    for k, annotation in enumerate(annotations):
      where = f"{annotations_path}: annotations[{k}]"
      try:
        by_question[json_io.field(annotation, "question_id", int, where)] = (annotation, where)
      except base.DataError as e:
        yield e
    for k, question in enumerate(questions):
      where = f"{questions_path}: questions[{k}]"
      try:
        yield self._record(question, where, by_question, subtype, image_dir)
      except base.DataError as e:
        yield e

  def _record(self, question, where, by_question, subtype, image_dir) -> base.Record:
    question_id = json_io.field(question, "question_id", int, where)
    image_id = json_io.field(question, "image_id", int, where)
    text = json_io.field(question, "question", str, where)
    if not text.strip():
      raise base.DataError(f"{where}: empty question")
    if question_id not in by_question:
      raise base.DataError(f"{where}: question_id {question_id} has no annotation")
    annotation, ann_where = by_question[question_id]
    answers = json_io.field(annotation, "answers", list, ann_where)
    if len(answers) != NUM_ANSWERS:
      raise base.DataError(f"{ann_where}: question_id {question_id} has {len(answers)} answers, "
                           f"expected {NUM_ANSWERS}")
    answer_texts = tuple(json_io.field(a, "answer", str, f"{ann_where}.answers[{i}]")
                         for i, a in enumerate(answers))
    target = json_io.field(annotation, "multiple_choice_answer", str, ann_where)
    answer_type = json_io.field(annotation, "answer_type", str, ann_where)
    if json_io.field(annotation, "image_id", int, ann_where) != image_id:
      raise base.DataError(f"{ann_where}: image_id differs from the question's ({image_id})")
    image = self.image_pattern.format(data_subtype=subtype, image_id=image_id)
    return base.Record(prompts.vqa_prompt(text), target.strip(),
                       f"{where} (question_id {question_id})",
                       image_paths=(os.path.join(image_dir, image),),
                       extras={"answers": answer_texts, "answer_type": (answer_type,),
                               "question_id": (str(question_id),), "image_id": (str(image_id),)})
