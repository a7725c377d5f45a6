"""seqio postprocessors that turn an example into what a metric expects (no TensorFlow).

seqio calls a task's ``postprocess_fn(text, example=..., is_target=...)`` on the target text
(``is_target=True``) and on every generated text (``is_target=False``); the metric functions then
get ``(targets, predictions)``. In ``palix eval`` the ``example`` is the raw example dict of
:mod:`palix.tasks.eval_examples` (``inputs``, ``targets``, ``record_id``, ``image_size``, and the
source's extra fields such as ``answers`` or ``references`` as tuples of strings).

* :func:`vqa`: target ``{"answers": [...], "answer_type": ...}`` for ``vqa_accuracy``;
* :func:`caption`: target = the list of reference captions for ``coco_caption_metrics``;
* :func:`detection`: target ``{"boxes", "labels", "image_size"}`` for ``coco_detection_map``.

Generated text is passed through unchanged: each metric applies its own official normalisation.
"""

from typing import Any, Dict, List, Mapping, Optional

from palix import loc_tokens

# VQAv2 has ten human answers per question; single-answer datasets repeat theirs ten times.
NUM_VQA_ANSWERS = 10


def _first(example: Mapping[str, Any], key: str) -> Optional[str]:
  """A one-value extra field (stored as a tuple of strings) as a string, or None."""
  value = example.get(key)
  if value is None:
    return None
  if isinstance(value, str):
    return value
  values = list(value)
  return str(values[0]) if values else None


def _where(example: Optional[Mapping[str, Any]]) -> str:
  return str((example or {}).get("record_id", "example"))


def vqa(text: str, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
  """Target: the human answers for ``vqa_accuracy``; a prediction: the text unchanged.

  The answers come from the example's ``answers`` field (VQAv2: ten) or, without one, from the
  target text. **A single answer is repeated ten times** (easy-VQA has one answer per question):
  the official algorithm then scores 1 exactly when the prediction equals it after whitespace
  cleaning, since ten agreeing humans switch normalisation off; with just one answer the
  leave-one-out rule would give every prediction 0. ``answer_type`` and ``question_type`` are
  passed on when the example has them (per-type accuracies).
  """
  if not is_target:
    return text
  example = example or {}
  answers = [a for a in example.get("answers", ()) if a] or [text]
  if not all(isinstance(a, str) for a in answers):
    raise ValueError(f"{_where(example)}: 'answers' must be strings; got {answers!r}")
  if len(answers) == 1:
    answers = answers * NUM_VQA_ANSWERS
  target: Dict[str, Any] = {"answers": answers}
  for key in ("answer_type", "question_type"):
    value = _first(example, key)
    if value:
      target[key] = value
  return target


def caption(text: str, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
  """Target: the reference captions (the example's ``references`` without the empty padding,
  else the target text alone); a prediction: the text unchanged."""
  if not is_target:
    return text
  references: List[str] = [r for r in (example or {}).get("references", ()) if r.strip()]
  return references or [text]


def detection(text: str, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
  """Target: ``{"boxes", "labels", "image_size"}`` for ``coco_detection_map``; a prediction: the
  text unchanged (the metric parses it with its token scores).

  Boxes are the example's exact ``boxes``/``labels`` when its source knows them (e.g.
  ``shapes_detection``), otherwise the target text's location tokens (within half a bin,
  1/2046 of the side, of the annotation). ``image_size`` is the original ``(height, width)``.
  """
  if not is_target:
    return text
  example = example or {}
  size = example.get("image_size")
  if not size or len(size) != 2:
    raise ValueError(f"{_where(example)}: a detection target needs the original image_size "
                     f"(height, width); the example has {size!r}")
  if "boxes" in example:
    boxes = [tuple(float(c) for c in box) for box in example["boxes"]]
    labels = list(example["labels"])
  else:
    parsed = loc_tokens.parse_detections(text)
    boxes, labels = [d.box for d in parsed], [d.label for d in parsed]
  return {"boxes": boxes, "labels": labels, "image_size": (int(size[0]), int(size[1]))}
