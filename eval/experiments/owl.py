"""Open-vocabulary detection and OWL-ST self-training on the shapes canvases (docs/owl.md).

    python -m palix.eval.experiments.owl [--seeds 0,1,2] [--work_dir /tmp/owl_experiment]
        [--self_train_seeds 0,1,2] [--json docs/results/owl.json] [--csv docs/results/owl.csv]
    [--png docs/img/owl.png]

Every stage is the documented command (``palix train`` with the ``experiments/owl_*.gin`` files,
``palix owl ...``), run as its own process; per seed:

1. **image-text**: SigLIP pretraining on the captioned canvases (``shapes_captions``, captions
   that name all 13 classes); check: ``palix owl zero-shot`` (one object per canvas, 13 classes);
2. **base**: the detector, warm-started from (1), trained on ``shapes_detection_seen`` (the 9
   seen classes boxed; the 4 unseen ones stay in the images, never boxed, never queried);
3. **OWL-ST**: ``palix owl captions`` (once: captioned canvases of their own seed, as PNG files),
   ``palix owl queries`` (caption n-grams), ``palix owl label`` (the base detector's pseudo-boxes,
   COCO file), then ``palix train`` on them (``owl_self_train.gin``: token dropping 50%, top-24
   instance selection), once per ``--self_train_seeds`` (the same base detector and pseudo-boxes;
   the seed draws the batches, mosaics, negative queries and dropped tokens), so the effect of
   self-training is measured against the spread of self-training alone;
4. **fine-tune + ensemble**: the self-trained detector fine-tuned on the human (seen) boxes, and
   the 50/50 weight-space average of the two.

Each detector is evaluated by ``palix eval`` (``runs/eval_detection.gin``) on the 500 held-out
``shapes_detection`` test canvases (sprites of the test splits, never trained on): every image
queried with all 13 class names, COCO mAP by pycocotools over all, seen and unseen classes. The
pseudo-boxes are also scored against the captioned canvases' true boxes (which OWL-ST never
reads), and the base and self-trained detectors get ``token_diagnostics`` (box placement vs class
choice). CPU time is each process's user + system time. Finished stages in ``--work_dir`` are
reused (delete to rerun).
"""

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

MODEL_GIN = "models/owl/owl_tiny.gin"
MODEL = (f"--gin_file={MODEL_GIN}",)
IMAGE_TEXT = ("--gin_file=models/owl/image_text_tiny.gin",)
UNSEEN = ("ankle boot", "bag", "triangle", "trouser")
STAGES = ("base", "self_trained", "finetuned", "ensemble")


def run(command: List[str], log_path: str) -> float:
  """Runs ``palix ...``; returns its CPU seconds (user + system). Raises with the log's tail."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(log_path, "w") as log:
    code = subprocess.call([sys.executable, "-m", "palix.cli.main", *command], stdout=log,
                           stderr=subprocess.STDOUT)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if code:
    with open(log_path) as log:
      raise RuntimeError(f"palix {command[0]} failed ({code}):\n" + log.read()[-3000:])
  return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def json_output(log_path: str) -> dict:
  text = open(log_path).read()
  return json.loads(text[text.index("{\n"):])


class Seed:
  """The stages of one seed, each cached in its folder (``done.json`` holds its results)."""

  def __init__(self, work_dir: str, seed: int, steps: Dict[str, int]):
    self.dir, self.seed, self.steps = os.path.join(work_dir, f"seed{seed}"), seed, steps
    os.makedirs(self.dir, exist_ok=True)

  def stage(self, name: str, fn) -> dict:
    folder = os.path.join(self.dir, name)
    done = os.path.join(folder, "done.json")
    if os.path.isfile(done):
      with open(done) as f:
        return json.load(f)
    os.makedirs(folder, exist_ok=True)
    start = time.time()
    result = fn(folder)
    result["wall_s"] = round(time.time() - start, 1)
    with open(done, "w") as f:
      json.dump(result, f, indent=1)
    return result

  def train(self, folder: str, gin_files, experiment: str, steps: int, bindings=(),
            seed=None) -> float:
    command = ["train", *gin_files, "--gin_file=runs/pretrain.gin",
               f"--gin_file=experiments/{experiment}", f"--gin.MODEL_DIR='{folder}/run'",
               f"--gin.TRAIN_STEPS={steps}",
               f"--gin.SEED={self.seed if seed is None else seed}",
               "--gin.trainer.train.progress_bar=False", *bindings]
    return run(command, os.path.join(folder, "train.log"))

  def evaluate(self, folder: str, checkpoint: str) -> dict:
    cpu = run(["eval", *MODEL, "--gin_file=runs/eval_detection.gin",
               f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--gin.EVAL_OUTPUT_DIR='{folder}/eval'"],
              os.path.join(folder, "eval.log"))
    with open(os.path.join(folder, "eval", "metrics.json")) as f:
      metrics = json.load(f)
    return {group: {k: metrics[group][k] for k in ("mAP", "mAP_50")} for group in metrics} | {
        "eval_cpu_s": round(cpu, 1)}


def pseudo_label_quality(annotations: str, captions: str) -> dict:
  """Pseudo-boxes whose query is a class name, against the captioned canvases' true boxes:
  precision (IoU >= 0.5 with a true box of that class) and recall of the unseen objects."""
  # pylint: disable=g-import-not-at-top
  from palix.owl_st import pseudo_labels
  from palix.tasks import box_tasks
  source = box_tasks.get_box_task("shapes_captions").source
  with open(annotations) as f:
    coco = json.load(f)
  names = {c["id"]: c["name"] for c in coco["categories"]}
  by_image = {}
  for a in coco["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  records = {os.path.basename(r["image"]): r for r in pseudo_labels.read_jsonl(captions,
                                                                               ("image",))}
  named = correct = unseen_total = unseen_found = 0
  for image in coco["images"]:
    record = records[os.path.basename(image["file_name"])]
    index = int(record["source"].split("[")[1].rstrip("]"))
    truth = source.example("train", index)
    found = []
    for a in by_image.get(image["id"], []):
      x, y, w, h = a["bbox"]
      box = (y / image["height"], x / image["width"], (y + h) / image["height"],
             (x + w) / image["width"])
      found.append((names[a["category_id"]], box))
    for label, box in found:
      if label not in box_tasks.ALL_CLASSES:
        continue
      named += 1
      correct += any(l == label and pseudo_labels.box_iou(box, tuple(t)) >= 0.5
                     for l, t in zip(truth.labels, truth.boxes.tolist()))
    for label, box in zip(truth.labels, truth.boxes.tolist()):
      if label in UNSEEN:
        unseen_total += 1
        unseen_found += any(l == label and pseudo_labels.box_iou(b, tuple(box)) >= 0.5
                            for l, b in found)
  return {"class_name_boxes": named, "precision_50": correct / max(named, 1),
          "unseen_objects_in_kept_images": unseen_total,
          "unseen_recall_50": unseen_found / max(unseen_total, 1)}


def self_train_stage(seed: int, self_seed: int) -> str:
  """The first self-training seed keeps the plain name (its folder predates the others)."""
  return "self_trained" if self_seed == seed else f"self_trained_seed{self_seed}"


def one_seed(work_dir: str, seed: int, steps: Dict[str, int], captions: str, queries: str,
             self_train_seeds: List[int], finetune: bool = True) -> dict:
  s = Seed(work_dir, seed, steps)
  out = {"seed": seed}

  def image_text(folder):
    cpu = s.train(folder, IMAGE_TEXT, "owl_image_text.gin", steps["image_text"])
    log = os.path.join(folder, "zero_shot.log")
    run(["owl", "zero-shot", *IMAGE_TEXT, f"--checkpoint={folder}/run"], log)
    return {"train_cpu_s": round(cpu, 1), **json_output(log)}

  out["image_text"] = s.stage("image_text", image_text)
  image_text_ckpt = os.path.join(s.dir, "image_text", "run")

  def base(folder):
    cpu = s.train(folder, MODEL, "owl_detector.gin", steps["detector"],
                  [f"--gin.IMAGE_TEXT_CHECKPOINT='{image_text_ckpt}'"])
    return {"train_cpu_s": round(cpu, 1), **s.evaluate(folder, f"{folder}/run")}

  out["base"] = s.stage("base", base)

  def pseudo(folder):
    cpu = run(["owl", "label", *MODEL, f"--checkpoint={s.dir}/base/run", f"--queries={queries}",
               f"--output_dir={folder}"], os.path.join(folder, "label.log"))
    with open(os.path.join(folder, "summary.json")) as f:
      summary = json.load(f)
    quality = pseudo_label_quality(os.path.join(folder, "annotations.json"), captions)
    return {"label_cpu_s": round(cpu, 1), "summary": summary, "quality": quality}

  out["pseudo_labels"] = s.stage("pseudo_labels", pseudo)

  def self_trained(self_seed):
    def stage(folder):
      cpu = s.train(folder, MODEL, "owl_self_train.gin", steps["self_train"],
                    [f"--gin.PSEUDO_LABELS='{s.dir}/pseudo_labels/annotations.json'",
                     f"--gin.INITIAL_DETECTOR='{s.dir}/base/run'"], seed=self_seed)
      return {"train_cpu_s": round(cpu, 1), "self_train_seed": self_seed,
              **s.evaluate(folder, f"{folder}/run")}
    return stage

  out["self_trained_runs"] = [
      {"self_train_seed": k, **s.stage(self_train_stage(seed, k), self_trained(k))}
      for k in [seed] + [k for k in self_train_seeds if k != seed]]
  out["self_trained"] = out["self_trained_runs"][0]
  if not finetune:
    return out

  def finetuned(folder):
    cpu = s.train(folder, MODEL, "owl_finetune.gin", steps["finetune"],
                  [f"--gin.INITIAL_DETECTOR='{s.dir}/self_trained/run'"])
    return {"train_cpu_s": round(cpu, 1), **s.evaluate(folder, f"{folder}/run")}

  out["finetuned"] = s.stage("finetuned", finetuned)

  def ensembled(folder):
    cpu = run(["owl", "ensemble", f"--checkpoint={s.dir}/self_trained/run",
               f"--checkpoint={s.dir}/finetuned/run", f"--output_dir={folder}/params"],
              os.path.join(folder, "ensemble.log"))
    return {"ensemble_cpu_s": round(cpu, 1), **s.evaluate(folder, f"{folder}/params")}

  out["ensemble"] = s.stage("ensemble", ensembled)
  return out


def shared_captions(work_dir: str, num_images: int) -> tuple:
  folder = os.path.join(work_dir, "captions")
  captions, queries = os.path.join(folder, "captions.jsonl"), os.path.join(folder, "queries.jsonl")
  if not os.path.isfile(queries):
    os.makedirs(folder, exist_ok=True)
    run(["owl", "captions", f"--output_dir={folder}", f"--num_examples={num_images}"],
        os.path.join(folder, "captions.log"))
    run(["owl", "queries", f"--captions={captions}", f"--output={queries}"],
        os.path.join(folder, "queries.log"))
  return captions, queries


def stage_runs(result: dict) -> List[tuple]:
  """``(stage, self-training seed, its results)`` of one base seed: every self-training run."""
  rows = [("base", None, result["base"])]
  rows += [("self_trained", r["self_train_seed"], r) for r in result["self_trained_runs"]]
  rows += [(stage, None, result[stage]) for stage in ("finetuned", "ensemble") if stage in result]
  return rows


def summarize(results: List[dict]) -> dict:
  def spread(values):
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}

  table = {}
  for stage in STAGES:
    runs = [run for r in results for name, _, run in stage_runs(r) if name == stage]
    if runs:
      table[stage] = {group: spread([run[group]["mAP_50"] for run in runs])
                      for group in ("all", "seen", "unseen")}
  cpu = {"image_text": spread([r["image_text"]["train_cpu_s"] / 60 for r in results]),
         "detector": spread([r["base"]["train_cpu_s"] / 60 for r in results]),
         "label": spread([r["pseudo_labels"]["label_cpu_s"] / 60 for r in results]),
         "self_train": spread([run["train_cpu_s"] / 60 for r in results
                               for run in r["self_trained_runs"]])}
  if all("finetuned" in r for r in results):
    cpu["finetune"] = spread([r["finetuned"]["train_cpu_s"] / 60 for r in results])
  zero_shot = spread([r["image_text"]["zero_shot_accuracy"] for r in results])
  pseudo = {k: spread([r["pseudo_labels"]["quality"][k] for r in results])
            for k in ("precision_50", "unseen_recall_50")}
  # Each self-training run against the base detector it started from.
  gain = {group: spread([run[group]["mAP_50"] - r["base"][group]["mAP_50"] for r in results
                         for run in r["self_trained_runs"]]) for group in ("seen", "unseen")}
  return {"mAP_50": table, "cpu_minutes": cpu, "zero_shot_accuracy": zero_shot,
          "pseudo_labels": pseudo, "unseen_gain_self_training": gain["unseen"],
          "seen_change_self_training": gain["seen"]}


def write_csv(path: str, results: List[dict]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["seed", "stage", "self_train_seed", "group", "mAP_50", "mAP",
                     "train_cpu_s"])
    for r in results:
      for stage, self_seed, run in stage_runs(r):
        for group in ("all", "seen", "unseen"):
          writer.writerow([r["seed"], stage, "" if self_seed is None else self_seed, group,
                           round(run[group]["mAP_50"], 4), round(run[group]["mAP"], 4),
                           run.get("train_cpu_s", "")])


def token_diagnostics(checkpoint: str, num_images: int = 100) -> dict:
  """Where a detector fails, on the first ``num_images`` held-out canvases queried with all 13
  class names: for each true object the token whose box overlaps it most ("best token"), its
  IoU, whether its highest-scoring class is the object's class (overall and per class), the
  score of the true class there, and how many tokens have higher objectness."""
  # pylint: disable=g-import-not-at-top
  import gin
  from palix import detect
  from palix.owl_st import pseudo_labels
  from palix.tasks import box_batches
  from palix.tasks import box_tasks
  gin.clear_config()
  detector = detect.Detector.from_checkpoint([MODEL_GIN], checkpoint)
  names = list(box_tasks.ALL_CLASSES)
  tokens = detector.tokenizer.encode(names, detector.model.max_queries,
                                     pad_to=detector.model.max_queries)
  source = box_tasks.get_box_task("shapes_detection").source
  ious, right, true_scores, ranks = [], [], [], []
  per_class = {name: [] for name in names}
  for index in range(num_images):
    example = source.example("test", index)
    pixels = box_batches.resize(example.image, detector.model.image_size)
    out = detector.model.detect(detector.params, pixels.astype(np.float32)[None] / 127.5 - 1,
                                tokens[None])
    boxes, scores, objectness = (np.asarray(out[k])[0] for k in ("boxes", "scores",
                                                                 "objectness"))
    for box, label in zip(example.boxes.tolist(), example.labels):
      overlap = np.array([pseudo_labels.box_iou(tuple(box), tuple(b)) for b in boxes])
      best, k = int(np.argmax(overlap)), names.index(label)
      ious.append(overlap[best])
      right.append(int(np.argmax(scores[best, :len(names)]) == k))
      per_class[label].append(right[-1])
      true_scores.append(float(scores[best, k]))
      ranks.append(int((objectness > objectness[best]).sum()))
  ious = np.array(ious)
  return {"images": num_images, "objects": len(ious),
          "best_token_iou_mean": float(ious.mean()),
          "best_token_iou_at_least_0.5": float((ious >= 0.5).mean()),
          "class_top1_at_best_token": float(np.mean(right)),
          "class_top1_by_class": {k: float(np.mean(v)) for k, v in per_class.items() if v},
          "true_class_score_median": float(np.median(true_scores)),
          "objectness_rank_median": float(np.median(ranks))}


def draw_unseen(path: str, work_dir: str, seed: int, num_images: int = 6) -> None:
  """Held-out canvases queried with the 4 unseen class names: base detector (top row) and
  after self-training (bottom row); boxes scoring >= 0.3, true unseen boxes in green."""
  # pylint: disable=g-import-not-at-top
  import gin
  from PIL import Image
  from palix import detect
  from palix.eval.report import images as report_images
  from palix.tasks import box_tasks
  source = box_tasks.get_box_task("shapes_detection").source
  chosen = [i for i in range(200)
            if any(l in UNSEEN for l in source.example("test", i).labels)][:num_images]
  rows = []
  for stage in ("base", "self_trained"):
    gin.clear_config()
    detector = detect.Detector.from_checkpoint([MODEL_GIN],
                                               os.path.join(work_dir, f"seed{seed}", stage, "run"))
    tiles = []
    for index in chosen:
      example = source.example("test", index)
      found = detector.detect(example.image, list(UNSEEN), score_threshold=0.3, max_detections=5)
      truth = [report_images.ReportBox(tuple(b), l) for b, l in
               zip(example.boxes.tolist(), example.labels) if l in UNSEEN]
      tile = os.path.join(work_dir, f"tile_{stage}_{index}.png")
      report_images.render_png(index, example.image, tile, target_boxes=truth,
                               predicted_boxes=[report_images.ReportBox(d.box, d.label, d.score)
                                                for d in found])
      tiles.append(Image.open(tile).convert("RGB"))
    rows.append(tiles)
  width, height = rows[0][0].size
  sheet = Image.new("RGB", (width * len(chosen), height * 2), (255, 255, 255))
  for r, tiles in enumerate(rows):
    for c, tile in enumerate(tiles):
      sheet.paste(tile, (c * width, r * height))
  sheet = sheet.resize((sheet.width // 2, sheet.height // 2), Image.LANCZOS)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sheet.save(path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--work_dir", default="/tmp/owl_experiment")
  parser.add_argument("--image_text_steps", type=int, default=800)
  parser.add_argument("--detector_steps", type=int, default=800)
  parser.add_argument("--self_train_steps", type=int, default=400)
  parser.add_argument("--finetune_steps", type=int, default=150)
  parser.add_argument("--captioned_images", type=int, default=2000)
  parser.add_argument("--self_train_seeds", default="",
                      help="more self-training runs per base seed (default: its own seed only)")
  parser.add_argument("--no_finetune", action="store_true",
                      help="stop after self-training (no fine-tuning, no ensemble)")
  parser.add_argument("--json", default="docs/results/owl.json")
  parser.add_argument("--csv", default="docs/results/owl.csv")
  parser.add_argument("--png", default="docs/img/owl.png")
  args = parser.parse_args(argv)
  steps = {"image_text": args.image_text_steps, "detector": args.detector_steps,
           "self_train": args.self_train_steps, "finetune": args.finetune_steps}
  captions, queries = shared_captions(args.work_dir, args.captioned_images)
  self_train_seeds = [int(s) for s in args.self_train_seeds.split(",") if s]
  results = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    results.append(one_seed(args.work_dir, seed, steps, captions, queries, self_train_seeds,
                            finetune=not args.no_finetune))
    print(json.dumps({"seed": seed, **{k: results[-1][k] for k in STAGES if k in results[-1]}},
                     default=float))
  diagnostics = {f"seed{r['seed']}/{stage}": token_diagnostics(
      os.path.join(args.work_dir, f"seed{r['seed']}", stage, "run"))
                 for r in results for stage in ("base", "self_trained")}
  summary = {"steps": steps, "captioned_images": args.captioned_images,
             "seeds": [r["seed"] for r in results], **summarize(results),
             "diagnostics": diagnostics, "runs": results}
  for path in (args.json, args.csv, args.png):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(summary, f, indent=1, default=float)
  write_csv(args.csv, results)
  draw_unseen(args.png, args.work_dir, results[0]["seed"])
  print(json.dumps({k: summary[k] for k in ("mAP_50", "cpu_minutes", "zero_shot_accuracy",
                                            "pseudo_labels", "unseen_gain_self_training",
                                            "seen_change_self_training")},
                   indent=1, default=float))


if __name__ == "__main__":
  np.set_printoptions(precision=4)
  main()
