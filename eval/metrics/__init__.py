"""Exact benchmark metrics (pure functions, seqio's ``fn(targets, predictions) -> dict`` shape).

===========================  =============================================  ==================
metric                       follows                                        scale
===========================  =============================================  ==================
``vqa_accuracy``             GT-Vision-Lab VQA ``vqaEval.py``               percent
``coco_caption_metrics``     pycocoevalcap (BLEU, METEOR, ROUGE-L, CIDEr)   fraction
``coco_detection_map``       pycocotools ``COCOeval`` (bbox)                fraction
``anls``                     RRC / DocVQA ANLS (threshold 0.5)              fraction
``relaxed_accuracy``         pix2struct ChartQA relaxed correctness         fraction
``exact_match``              string equality after ``strip()``              fraction
``normalized_exact_match``   SQuAD-style normalisation, then equality       fraction
===========================  =============================================  ==================

TensorFlow is never imported; pycocoevalcap and pycocotools are imported when their metric runs.
See docs/evaluation.md.
"""

from palix.eval.metrics.anls import anls, anls_scores
from palix.eval.metrics.captioning import (CaptionScores, JavaNotFoundError, coco_caption_metrics,
                                           coco_caption_scores, require_java)
from palix.eval.metrics.detection import coco_detection_map, normalized_to_coco_box
from palix.eval.metrics.detection_parsing import (ScoredDetection, parse_scored_detections,
                                                  parse_scored_detections_from_ids)
from palix.eval.metrics.exact_match import exact_match, normalized_exact_match
from palix.eval.metrics.official_files import load_coco_caption_files, load_vqa_files
from palix.eval.metrics.relaxed_accuracy import relaxed_accuracy, relaxed_accuracy_scores
from palix.eval.metrics.vqa import vqa_accuracy, vqa_answer_accuracy, vqa_question_accuracies
