"""Benchmark metrics of a checkpoint on a task or mixture, and an HTML report to look at.

``palix eval --gin_file=MODEL.gin --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=...`` runs
``palix.eval.evaluator.evaluate``: decodes each task's split, scores it with the metrics the
task declares, prints the metrics table and writes metrics.json, metrics.md, report.html and
predictions/*.jsonl to ``EVAL_OUTPUT_DIR`` (default ``./palix_eval/<name>-<split>``).
``--module my_tasks`` imports a module that registers your own tasks first. See
docs/evaluation.md. A run file may bind another evaluation with the same outputs to
``palix.cli.eval.evaluation.fn``: ``runs/eval_detection.gin`` scores an OWL detector by COCO mAP
(``palix.eval.detection_eval``, docs/owl.md).
"""

import argparse
import pathlib
import sys

import gin

from palix.eval import evaluator
from palix.eval.report import metrics_table
from palix.training import run_config


def _bound(name: str) -> bool:
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False


@gin.configurable
def evaluation(fn=None):
  """Runs ``fn`` (bound by the run file) or, by default, ``palix.eval.evaluator.evaluate``."""
  return (fn or evaluator.evaluate)()


def run(argv):
  parser = argparse.ArgumentParser(prog="palix eval", description=__doc__.splitlines()[0])
  run_config.parse_run_flags(argv, parser)
  if not (_bound("palix.eval.evaluator.evaluate.checkpoint_path")
          or _bound("palix.cli.eval.evaluation.fn")):
    parser.error("the gin files do not configure palix.eval.evaluator.evaluate; add "
                 "--gin_file=runs/eval.gin after the model file")
  output = evaluation()  # errors (a missing path, no java, ...): one line, palix.cli.main
  run_config.check_command_line_bindings_read()
  pathlib.Path(output.output_dir, "config.gin").write_text(gin.operative_config_str())
  sys.stdout.write(metrics_table.markdown("metrics", output.metrics))
  print(f"\nreport: {output.report.html}")
  print(f"predictions: {pathlib.Path(output.output_dir) / 'predictions'}")
  return 0
