"""Benchmark metrics of a checkpoint on a task or mixture, and an HTML report to look at.

``palix eval --gin_file=MODEL.gin --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=...`` runs
``palix.eval.evaluator.evaluate``: decodes each task's split, scores it with the metrics the
task declares, prints the metrics table and writes metrics.json, metrics.md, report.html and
predictions/*.jsonl to ``EVAL_OUTPUT_DIR`` (default ``./palix_eval/<name>-<split>``).
``--module my_tasks`` imports a module that registers your own tasks first. See
docs/evaluation.md.
"""

import argparse
import pathlib
import sys

import gin

from palix import config as palix_config
from palix.eval import evaluator
from palix.eval.metrics.captioning import JavaNotFoundError
from palix.eval.report import metrics_table
from palix.training import run_config

OPTIONAL_MACROS = {"EVAL_OUTPUT_DIR": None}  # required by the run file's teacher-forced job only


def _parse(argv, parser) -> None:
  bindings, rest = palix_config.split_gin_bindings(argv)
  palix_config.add_gin_flags(parser)
  palix_config.add_module_flag(parser)
  args = parser.parse_args(rest)
  palix_config.import_modules(args.module, parser)
  if not args.gin_file:
    parser.error("at least one --gin_file is required: a model file (e.g. "
                 "models/palix/palix_tiny.gin), the run file runs/eval.gin and your "
                 "settings")
  try:
    palix_config.parse_gin(args.gin_file, bindings, args.gin_search_paths, finalize=False)
    unset = run_config.unset_required_macros()
    gin.parse_config([f"{name} = {value!r}" for name, value in OPTIONAL_MACROS.items()
                      if name in unset])
    run_config.check_required_macros()
    gin.finalize()
  except (ValueError, FileNotFoundError, ImportError) as e:
    parser.error(str(e))
  if not _bound("palix.eval.evaluator.evaluate.checkpoint_path"):
    parser.error("the gin files do not configure palix.eval.evaluator.evaluate; add "
                 "--gin_file=runs/eval.gin after the model file")


def _bound(name: str) -> bool:
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False


def run(argv):
  parser = argparse.ArgumentParser(prog="palix eval", description=__doc__.splitlines()[0])
  _parse(argv, parser)
  run_config.show_palix_logs()
  try:
    output = evaluator.evaluate()
  except (FileNotFoundError, JavaNotFoundError) as e:  # a path or a tool to fix, not a bug
    print(f"palix eval: {e}", file=sys.stderr)
    return 1
  pathlib.Path(output.output_dir, "config.gin").write_text(gin.operative_config_str())
  sys.stdout.write(metrics_table.markdown("metrics", output.metrics))
  print(f"\nreport: {output.report.html}")
  print(f"predictions: {pathlib.Path(output.output_dir) / 'predictions'}")
  return 0
