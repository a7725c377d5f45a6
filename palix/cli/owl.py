"""``palix owl STAGE``: the OWL-ST self-training pipeline and detection metrics (docs/owl.md).

Stages, each writing files the next one reads:

* ``captions --output_dir D``: the built-in captioned canvases as PNGs + ``D/captions.jsonl``
  (your own data: a JSONL of ``{"image", "caption"}``);
* ``queries --captions C --output Q``: caption n-grams as each image's queries;
* ``label --gin_file=MODEL.gin --checkpoint=CKPT --queries Q --output_dir D``: the detector's
  boxes for those queries, kept by score thresholds, as ``D/annotations.json`` (COCO) and
  ``D/summary.json``; self-training reads them (``gin/experiments/owl_self_train.gin``);
* ``ensemble --checkpoint A --checkpoint B --output_dir D``: weight-space average;
* ``zero-shot --gin_file=IMAGE_TEXT.gin --checkpoint=CKPT``: zero-shot classification accuracy
  of an image-text model by text query (one object per canvas, 13 classes).

A detector's COCO mAP (over all, seen and unseen classes) is ``palix eval`` with
``runs/eval_detection.gin``.
"""

import argparse
import json
import os
import sys

import gin

from palix import config as palix_config


@gin.configurable
def configured_model(model=gin.REQUIRED):
  return model


def _model(args, parser, bindings):
  if not args.gin_file:
    parser.error("--gin_file is required: the detector's model file, e.g. "
                 "models/owl/owl_tiny.gin")
  try:
    palix_config.parse_gin(args.gin_file, bindings + ["palix.cli.owl.configured_model.model = "
                                                      "%MODEL"], args.gin_search_paths,
                           finalize=False)
  except (ValueError, FileNotFoundError, ImportError) as e:
    parser.error(str(e))
  return configured_model()


def _load_params(model, checkpoint: str, batch_size: int):
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from palix import partitioning
  from palix.training import checkpoints
  shapes = model.input_shapes(batch_size)
  types = {k: np.float32 if k == "images" else np.int32 for k in shapes}
  return checkpoints.load_model_params(model, checkpoint, partitioning.Partitioner(), shapes,
                                       types)


def _captions(args, parser, bindings) -> dict:
  del parser, bindings
  from palix.tasks import box_tasks  # pylint: disable=g-import-not-at-top  # the data layer
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from palix.owl_st import pseudo_labels  # pylint: disable=g-import-not-at-top
  source = box_tasks.get_box_task(args.task).source
  count = source.num_examples(args.split)
  stop = count if args.num_examples is None else min(count, args.start + args.num_examples)
  image_dir = os.path.join(args.output_dir, "images")
  os.makedirs(image_dir, exist_ok=True)
  records = []
  for index in range(args.start, stop):
    example = source.example(args.split, index)
    if not example.caption:
      raise ValueError(f"{example.record_id} has no caption; {args.task!r} is not a captioned task")
    path = os.path.join(image_dir, f"{args.split}_{index:06d}.png")
    Image.fromarray(example.image).save(path)
    records.append({"image": path, "caption": example.caption, "source": example.record_id})
  pseudo_labels.write_jsonl(os.path.join(args.output_dir, "captions.jsonl"), records)
  return {"captions": os.path.join(args.output_dir, "captions.jsonl"), "images": len(records)}


def _queries(args, parser, bindings) -> dict:
  del parser, bindings
  # pylint: disable=g-import-not-at-top
  from palix.owl_st import ngrams
  from palix.owl_st import pseudo_labels
  records = pseudo_labels.read_jsonl(args.captions, ("image", "caption"))
  for record in records:
    record["queries"] = ngrams.caption_ngrams(record["caption"], args.max_ngram)
  pseudo_labels.write_jsonl(args.output, records)
  counts = [len(r["queries"]) for r in records]
  return {"queries": args.output, "images": len(records),
          "queries_per_image": round(sum(counts) / len(counts), 2)}


def _label(args, parser, bindings) -> dict:
  from palix.owl_st import pseudo_labels  # pylint: disable=g-import-not-at-top
  model = _model(args, parser, bindings)
  thresholds = pseudo_labels.Thresholds(args.box_threshold, args.image_threshold, args.nms_iou,
                                        args.max_boxes)
  records = pseudo_labels.read_jsonl(args.queries, ("image", "queries"))
  params = _load_params(model, args.checkpoint, args.batch_size)
  return pseudo_labels.pseudo_label(model, params, records, args.output_dir, thresholds,
                                    batch_size=args.batch_size)


def _ensemble(args, parser, bindings) -> dict:
  del parser, bindings
  from palix.owl_st import ensemble  # pylint: disable=g-import-not-at-top
  weights = args.weights or [1.0 / len(args.checkpoint)] * len(args.checkpoint)
  return ensemble.average_checkpoints(args.checkpoint, weights, args.output_dir)


def _zero_shot(args, parser, bindings) -> dict:
  from palix.eval import image_text_eval  # pylint: disable=g-import-not-at-top
  model = _model(args, parser, bindings)
  images, labels, names = image_text_eval.single_object_canvases(args.num_examples,
                                                                 model.image_size)
  params = _load_params(model, args.checkpoint, args.batch_size)
  return image_text_eval.zero_shot_accuracy(model, params, images, labels, names,
                                            batch_size=args.batch_size)


STAGES = {"captions": _captions, "queries": _queries, "label": _label, "ensemble": _ensemble,
          "zero-shot": _zero_shot}


def _parsers():
  """The ``palix owl`` parser and one parser per stage."""
  parser = argparse.ArgumentParser(prog="palix owl", description=__doc__.splitlines()[0])
  stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
  by_stage = {}
  p = by_stage["captions"] = stages.add_parser("captions",
                                               help="write captioned images + captions.jsonl")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--task", default="shapes_captions", help="a captioned box task")
  p.add_argument("--split", default="train")
  p.add_argument("--start", type=int, default=0)
  p.add_argument("--num_examples", type=int, default=None)
  p = by_stage["queries"] = stages.add_parser("queries", help="caption n-grams -> queries JSONL")
  p.add_argument("--captions", required=True, help="JSONL of {image, caption}")
  p.add_argument("--output", required=True)
  p.add_argument("--max_ngram", type=int, default=3)
  for name, help_text in (("label", "pseudo-boxes of a detector as a COCO file"),
                          ("zero-shot", "zero-shot classification of an image-text model")):
    p = by_stage[name] = stages.add_parser(name, help=help_text)
    palix_config.add_gin_flags(p)
    p.add_argument("--checkpoint", required=True, help="training run, step or params-only")
    p.add_argument("--batch_size", type=int, default=32)
  by_stage["zero-shot"].add_argument("--num_examples", type=int, default=500)
  by_stage["label"].add_argument("--output_dir", required=True)
  label = by_stage["label"]
  label.add_argument("--queries", required=True, help="JSONL of {image, queries}")
  label.add_argument("--box_threshold", type=float, default=0.1)
  label.add_argument("--image_threshold", type=float, default=0.3)
  label.add_argument("--nms_iou", type=float, default=0.5)
  label.add_argument("--max_boxes", type=int, default=16)
  p = by_stage["ensemble"] = stages.add_parser("ensemble",
                                               help="weight-space average of checkpoints")
  p.add_argument("--checkpoint", action="append", required=True)
  p.add_argument("--weights", type=float, nargs="+", default=None)
  p.add_argument("--output_dir", required=True)
  return parser, by_stage


def run(argv):
  parser, by_stage = _parsers()
  bindings, rest = palix_config.split_gin_bindings(argv)
  args = parser.parse_args(rest)
  if bindings and args.stage not in ("label", "zero-shot"):
    by_stage[args.stage].error("--gin.* bindings only apply to the label and zero-shot stages")
  try:
    result = STAGES[args.stage](args, by_stage[args.stage], bindings)
  except (ValueError, FileNotFoundError) as e:
    print(f"palix owl {args.stage}: {e}", file=sys.stderr)
    return 1
  print(json.dumps(result, indent=1, default=float))
  return 0
