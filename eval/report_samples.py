"""Report cards of evaluated examples: image(s), prompt, prediction, target, boxes, a verdict.

What a card shows follows the postprocessed target, not the task's name:

* VQA targets (a dict with ``answers``): the official per-question accuracy as the badge;
* detection targets (a dict with ``boxes``): target boxes (green) and the predicted boxes parsed
  from the generated tokens (orange, labelled with ``exp(score)``, the joint probability of the
  box's tokens);
* texts or lists of texts (exact match, captions): correct when the prediction equals one of them
  after ``strip()``;
* zero-shot classification: the best-scoring class text, marked right or wrong.
"""

import math
from typing import Any, List, Mapping, Sequence

import numpy as np
from PIL import Image

from palix.eval.aux_metrics import ZeroShotClassification
from palix.eval.metrics.detection_parsing import parse_scored_detections
from palix.eval.metrics.vqa import vqa_answer_accuracy
from palix.eval.report import ReportBox, ReportSample
from palix.eval.task_predictions import ExamplePrediction


def _images(prediction: ExamplePrediction):
  example = prediction.example
  if example.get("pixels") is not None:
    return example["pixels"]
  if prediction.model_images is not None and len(prediction.model_images):
    return prediction.model_images
  paths = example.get("image_paths") or ()
  return [np.asarray(Image.open(p).convert("RGB")) for p in paths] or None


def _unique(texts: Sequence[str]) -> List[str]:
  return list(dict.fromkeys(str(t) for t in texts))


def _verdict(score: float):
  return True if score >= 1.0 - 1e-9 else False if score <= 0.0 else None


def report_sample(task_name: str, prediction: ExamplePrediction, target: Any,
                  output: Any, metric_fns: Sequence = ()) -> ReportSample:
  """One card (``target``/``output``: the postprocessed target and prediction)."""
  example = prediction.example
  sample = {"image": _images(prediction), "prompt": example["inputs"],
            "prediction": prediction.text, "title": f"{task_name} #{example['index']}",
            "extra": {}}
  text = output if isinstance(output, str) else prediction.text
  if isinstance(target, Mapping) and "answers" in target:
    score = vqa_answer_accuracy(text, target["answers"])
    sample.update(target=_unique(target["answers"]), score=score, correct=_verdict(score))
  elif isinstance(target, Mapping) and "boxes" in target:
    detections = parse_scored_detections(prediction.pieces, prediction.logprobs)
    sample["target"] = example["targets"]
    sample["target_boxes"] = [ReportBox(tuple(b), str(l))
                              for b, l in zip(target["boxes"], target["labels"])]
    sample["predicted_boxes"] = [ReportBox(d.box, d.label, math.exp(d.score)) for d in detections]
    sample["extra"]["boxes"] = f"{len(detections)} predicted, {len(target['boxes'])} in the target"
  elif isinstance(target, str) or (isinstance(target, (list, tuple))
                                   and all(isinstance(t, str) for t in target)):
    golds = [target] if isinstance(target, str) else list(target)
    sample.update(target=_unique(golds), correct=text.strip() in {g.strip() for g in golds})
  else:
    sample["target"] = example["targets"]
  for fn in metric_fns:
    if isinstance(fn, ZeroShotClassification) and fn.class_texts in prediction.class_scores:
      best = fn.class_texts[int(np.argmax(prediction.class_scores[fn.class_texts]))]
      right = best == (target if isinstance(target, str) else example["targets"])
      name = "zero-shot class" + ("" if fn.metric_name == "zero_shot_accuracy"
                                  else f" ({fn.metric_name})")
      sample["extra"][name] = f"{best} ({'right' if right else 'wrong'})"
  sample["extra"]["record"] = example["record_id"]
  return ReportSample(**sample)
