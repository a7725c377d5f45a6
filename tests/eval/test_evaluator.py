"""``palix eval`` end to end on the tiny PaLI-X, and the evaluator against models with known output.

A params-only checkpoint of ``models/palix/palix_tiny.gin`` (random weights: metrics are then
near 0, which is fine for checking the files, ranges and batch invariance) is evaluated in process
on a mixture of four built-in tasks, once with batch size 4 and once with batch size 1. The
scripted models (``scripted_models.py``) check the numbers: answering with the targets must score
perfectly, answering nothing must score 0.
"""

import json
import math
import os
import pathlib
import re
import sys

import gin
import jax
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

import scripted_models  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODEL_GIN = "models/palix/palix_tiny.gin"
# The committed palix vocabulary has 1674 pieces: a 1792-row embedding keeps the model small.
SMALL_VOCAB = "T5Config.vocab_size=1792"
MIXTURE = "eval_test_mix"
TASKS = ("easy_vqa", "shapes_detection", "fashion_mnist_caption", "moving_shapes_vqa")
LENGTHS = {"inputs": 32, "targets": 48}
NUM_EXAMPLES = 4
NUM_IMAGES = 6  # moving_shapes_vqa clips have 6 frames


def _register_mixture(name, tasks):
  from palix.tasks import registry  # pylint: disable=g-import-not-at-top
  registry.ensure_registered()
  registry.add_mixture(name, [(task, 1.0) for task in tasks], replace=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A params-only Orbax checkpoint (what ``palix convert`` writes) with random weights."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from palix import config  # pylint: disable=g-import-not-at-top
  from palix.training import param_paths  # pylint: disable=g-import-not-at-top
  gin.clear_config()  # also unlocks a config a finalized run left behind
  config.parse_gin([MODEL_GIN], [SMALL_VOCAB], finalize=False)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  gin.clear_config()
  abstract = nn.meta.unbox(jax.eval_shape(model.get_initial_variables,
                                          jax.random.key(0))["params"])
  rng = np.random.default_rng(0)

  def value(path, leaf):  # jit-compiling the initialisers takes longer than the whole eval
    if path.endswith("scale"):
      return np.ones(leaf.shape, leaf.dtype)
    if len(leaf.shape) < 2:
      return np.zeros(leaf.shape, leaf.dtype)
    return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(leaf.dtype)

  params = param_paths.map_with_path_str(value, abstract)
  path = tmp_path_factory.mktemp("eval_checkpoint") / "params"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(path), {"params": params})
  return path


def _palix_eval(*flags):
  from palix.cli import main  # pylint: disable=g-import-not-at-top
  gin.clear_config()  # also unlocks a config a finalized run left behind
  try:
    return main.main(["eval", f"--gin_file={MODEL_GIN}", "--gin_file=runs/eval.gin",
                      f"--gin.{SMALL_VOCAB}", *flags])
  finally:
    gin.clear_config()


def _run(checkpoint, out, batch_size):
  _register_mixture(MIXTURE, TASKS)
  code = _palix_eval(
      f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.SPLIT='test'",
      f"--gin.BATCH_SIZE={batch_size}", f"--gin.NUM_IMAGES={NUM_IMAGES}",
      f"--gin.MAX_EVAL_EXAMPLES={NUM_EXAMPLES}", f"--gin.EVAL_OUTPUT_DIR='{out}'",
      "--gin.evaluator.evaluate.progress=False")
  assert code == 0
  return out


@pytest.fixture(scope="module")
def batch4_run(checkpoint, tmp_path_factory):
  return _run(checkpoint, tmp_path_factory.mktemp("eval_b4"), 4)


@pytest.fixture(scope="module")
def batch1_run(checkpoint, tmp_path_factory):
  return _run(checkpoint, tmp_path_factory.mktemp("eval_b1"), 1)


def _predictions(run, task):
  return [json.loads(line) for line in (run / "predictions" / f"{task}.jsonl").open()]


# --- palix eval on the tiny PaLI-X ----------------------------------------------------------------

def test_metrics_json_has_each_tasks_declared_metrics_in_range(batch4_run):
  metrics = json.loads((batch4_run / "metrics.json").read_text())
  assert sorted(metrics) == sorted(TASKS)
  for task in TASKS:
    assert metrics[task]["num_examples"] == NUM_EXAMPLES
  assert 0 <= metrics["easy_vqa"]["vqa_accuracy"] <= 100
  for key in ("mAP", "mAP_50", "mAP_75", "AR_100"):
    assert 0 <= metrics["shapes_detection"][key] <= 1, key
  assert metrics["shapes_detection"]["num_gt_boxes"] >= 2 * NUM_EXAMPLES
  for key in ("exact_match", "zero_shot_accuracy"):
    assert 0 <= metrics["fashion_mnist_caption"][key] <= 1, key
  assert 0 <= metrics["moving_shapes_vqa"]["exact_match"] <= 1
  # The exact-match values follow from the predictions file.
  for task in ("fashion_mnist_caption", "moving_shapes_vqa"):
    rows = _predictions(batch4_run, task)
    expected = np.mean([r["prediction"].strip() == r["target"].strip() for r in rows])
    assert metrics[task]["exact_match"] == pytest.approx(expected)


def test_zero_shot_accuracy_is_the_argmax_of_the_recorded_class_scores(batch4_run):
  from palix.eval import aux_metrics  # pylint: disable=g-import-not-at-top
  from palix.tasks import registry  # pylint: disable=g-import-not-at-top
  rows = _predictions(batch4_run, "fashion_mnist_caption")
  (zero_shot,) = [fn for fn in registry.BUILTIN_TASKS["fashion_mnist_caption"].metric_fns
                  if isinstance(fn, aux_metrics.ZeroShotClassification)]
  classes = zero_shot.class_texts
  right = []
  for row in rows:
    scores = row["class_scores"][0]["scores"]
    assert sorted(scores) == sorted(classes)
    assert all(s < 0 for s in scores.values())  # log-likelihoods of several tokens
    right.append(classes[int(np.argmax([scores[c] for c in classes]))] == row["target"])
  metrics = json.loads((batch4_run / "metrics.json").read_text())
  assert metrics["fashion_mnist_caption"]["zero_shot_accuracy"] == pytest.approx(np.mean(right))


def test_markdown_html_and_every_referenced_image_exist(batch4_run, capsys):
  markdown = (batch4_run / "metrics.md").read_text()
  for row in ("| easy_vqa/vqa_accuracy |", "| shapes_detection/mAP_50 |",
              "| fashion_mnist_caption/zero_shot_accuracy |", "| moving_shapes_vqa/exact_match |"):
    assert row in markdown
  page = (batch4_run / "report.html").read_text()
  sources = re.findall(r'<img src="([^"]+)"', page)
  # 4 cards per task; a moving-shapes card shows its 6 frames.
  assert len(sources) == 3 * NUM_EXAMPLES + NUM_EXAMPLES * NUM_IMAGES
  for source in sources:
    assert (batch4_run / source).is_file(), source
  for task in TASKS:
    assert page.count(f"{task} #") == NUM_EXAMPLES
  assert (batch4_run / "config.gin").is_file()


def test_detection_cards_show_the_exact_target_boxes(batch4_run):
  from palix.eval.report import images  # pylint: disable=g-import-not-at-top
  from palix.tasks import registry  # pylint: disable=g-import-not-at-top
  page = (batch4_run / "report.html").read_text()
  cards = re.findall(r'<img src="([^"]+)"[^>]*>(?:(?!<article).)*?shapes_detection #(\d+)', page,
                     flags=re.S)
  assert len(cards) == NUM_EXAMPLES
  source = registry.BUILTIN_TASKS["shapes_detection"].make_source()
  for png, index in cards:
    picture = np.asarray(Image.open(batch4_run / png).convert("RGB"))
    _, placed = source.objects("test", int(index))
    scale = picture.shape[0] / source.canvas  # small images are enlarged for the page
    green = np.all(picture == images.TARGET_COLOR, axis=-1)
    for (top, left, bottom, right), _ in placed:  # the outline's left edge is the exact box's
      x = int(round(left * scale))
      edge = green[int(round(top * scale)):int(round(bottom * scale)), x:x + 2].any(axis=1)
      assert edge.mean() > 0.5, (png, top, left, bottom, right)


def test_predictions_do_not_depend_on_the_batch_size(batch4_run, batch1_run):
  for task in TASKS:
    four, one = _predictions(batch4_run, task), _predictions(batch1_run, task)
    assert [r["index"] for r in four] == [r["index"] for r in one] == list(range(NUM_EXAMPLES))
    for a, b in zip(four, one):
      assert a["output_ids"] == b["output_ids"], (task, a["index"])
      assert a["prediction"] == b["prediction"]
      assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-4)
      for x, y in zip(a.get("class_scores", []), b.get("class_scores", [])):
        for text in x["scores"]:
          assert x["scores"][text] == pytest.approx(y["scores"][text], rel=1e-4, abs=1e-4)
  assert (json.loads((batch4_run / "metrics.json").read_text())
          == json.loads((batch1_run / "metrics.json").read_text()))


def test_answers_that_fill_the_decoding_length_are_flagged_truncated(batch4_run):
  """Random weights rarely emit EOS: most answers fill all LENGTHS['targets'] steps."""
  flags = []
  for task in TASKS:
    for r in _predictions(batch4_run, task):
      assert r["truncated"] == (len(r["output_ids"]) == LENGTHS["targets"]), (task, r["index"])
      flags.append(r["truncated"])
  assert any(flags)


def test_unset_required_macros_are_named(capsys):
  with pytest.raises(SystemExit):
    _palix_eval("--gin.MIXTURE_OR_TASK_NAME='easy_vqa'")
  message = capsys.readouterr().err
  assert "CHECKPOINT_PATH" in message and "TASK_FEATURE_LENGTHS" in message
  assert "EVAL_OUTPUT_DIR" not in message  # optional for palix eval


def test_a_missing_checkpoint_is_reported_by_path(tmp_path, capsys):
  missing = tmp_path / "no_such_run"
  assert _palix_eval(f"--gin.CHECKPOINT_PATH='{missing}'", "--gin.MIXTURE_OR_TASK_NAME='easy_vqa'",
                     f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}") == 1
  assert f"palix eval: error: checkpoint {str(missing)!r} does not exist" in capsys.readouterr().err


# --- the evaluator against scripted models ------------------------------------------------------

SCRIPTED_TASKS = ("easy_vqa", "shapes_detection", "fashion_mnist_caption", "easy_vqa_caption")


def _evaluate(model, tasks=SCRIPTED_TASKS):
  from palix.eval import evaluator  # pylint: disable=g-import-not-at-top
  _register_mixture("eval_scripted_mix", tasks)
  return evaluator.evaluate_tasks(
      model, None, "eval_scripted_mix", split="test", task_feature_lengths=LENGTHS, batch_size=4,
      num_images=1, image_size=32, max_examples=6, progress=False)


@pytest.fixture(scope="module")
def oracle_results():
  return _evaluate(scripted_models.OracleModel())


def test_answering_with_the_targets_scores_perfectly(oracle_results):
  results = oracle_results
  metrics = {name: result.scored.metrics for name, result in results.items()}
  assert metrics["easy_vqa"]["vqa_accuracy"] == 100.0
  detection = metrics["shapes_detection"]
  # Location tokens are within half a bin of the exact boxes: every IoU is far above 0.95.
  assert detection["mAP"] == pytest.approx(1.0) and detection["mAP_50"] == pytest.approx(1.0)
  assert detection["num_detections"] == detection["num_gt_boxes"] >= 12
  assert detection["num_unknown_label_detections"] == 0
  assert metrics["fashion_mnist_caption"] == {"exact_match": 1.0, "zero_shot_accuracy": 1.0,
                                              "num_examples": 6}
  captions = metrics["easy_vqa_caption"]
  assert captions["ROUGE_L"] == pytest.approx(1.0) and captions["Bleu_1"] == pytest.approx(1.0)
  assert captions["METEOR"] > 0.9 and captions["CIDEr"] > 1.0


def test_box_scores_are_the_summed_logprobs_of_their_own_tokens(oracle_results):
  from palix.eval import report_samples  # pylint: disable=g-import-not-at-top
  from palix.tasks import vocabulary  # pylint: disable=g-import-not-at-top
  result = oracle_results["shapes_detection"]
  separator = vocabulary.get_vocabulary().encode(" ;")
  for prediction, target, output in zip(result.predictions, result.scored.targets,
                                        result.scored.predictions):
    # Independently: split the ids at the separator, keep each object's tokens from its first
    # location token on; the oracle gives position t the log-probability -STEP * (t + 1).
    ids, expected, start = prediction.output_ids, [], 0
    for end in [i for i in range(len(ids)) if ids[i:i + len(separator)] == separator] + [len(ids)]:
      first = next(i for i in range(start, end) if vocabulary.FIRST_LOC_ID <= ids[i]
                   < vocabulary.SEPARATOR_ID)
      expected.append(-scripted_models.STEP * sum(t + 1 for t in range(first, end)))
      start = end + len(separator)
    sample = report_samples.report_sample("shapes_detection", prediction, target, output)
    assert [math.log(b.score) for b in sample.predicted_boxes] == pytest.approx(expected)
    assert len(sample.target_boxes) == len(expected)


def test_answering_nothing_scores_zero_and_ties_go_to_the_first_class():
  from palix.tasks.sources import fashion_mnist  # pylint: disable=g-import-not-at-top
  results = _evaluate(scripted_models.MuteModel(), SCRIPTED_TASKS[:3])
  metrics = {name: result.scored.metrics for name, result in results.items()}
  assert metrics["easy_vqa"]["vqa_accuracy"] == 0.0
  assert metrics["shapes_detection"]["mAP"] == 0.0
  assert metrics["shapes_detection"]["num_detections"] == 0
  labels = fashion_mnist.load("test")[1][:6]
  assert metrics["fashion_mnist_caption"] == {
      "exact_match": 0.0, "zero_shot_accuracy": float(np.mean(labels == 0)), "num_examples": 6}


class _GeometryRecorder(scripted_models.OracleModel):
  """The oracle, noting the geometry of every decoding call."""

  def __init__(self):
    super().__init__()
    self.calls = []

  def predict_batch_with_aux(self, params, batch, rng=None, *, max_decode_len=None, **kwargs):
    self.calls.append((batch["images"].shape[1], batch["encoder_input_tokens"].shape[1],
                       max_decode_len))
    return super().predict_batch_with_aux(params, batch, rng, max_decode_len=max_decode_len,
                                          **kwargs)


def test_each_task_is_decoded_in_its_own_geometry():
  from palix.eval import evaluator  # pylint: disable=g-import-not-at-top
  _register_mixture("eval_geometry_mix", ("easy_vqa", "moving_shapes_vqa"))
  model = _GeometryRecorder()
  results = evaluator.evaluate_tasks(
      model, None, "eval_geometry_mix", split="test", task_feature_lengths=LENGTHS, batch_size=4,
      num_images=NUM_IMAGES + 2, image_size=16, max_examples=4, progress=False,
      feature_lengths_by_task={"easy_vqa": {"inputs": 16, "targets": 4}})
  # easy-VQA: one image, its own lengths (decoding stops at 4 tokens); the clips: their 6 frames
  assert model.calls == [(1, 16, 4), (NUM_IMAGES, LENGTHS["inputs"], LENGTHS["targets"])]
  assert all(result.scored.metrics["vqa_accuracy" if name == "easy_vqa" else "exact_match"] in (100.0, 1.0)
             for name, result in results.items())
