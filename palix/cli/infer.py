"""``palix infer --gin_file=MODEL.gin --gin_file=runs/infer.gin [--gin.NAME=VALUE ...]``.

Runs the job the run file binds to ``palix.cli.infer.job.fn``: ``runs/infer.gin`` decodes a task
split into a predictions JSONL file (``palix.training.infer.infer``); ``runs/eval.gin`` computes
teacher-forced metrics (``palix.training.infer.evaluate``). See docs/training.md.
"""

import argparse
import json

import gin

from palix.training import infer as infer_lib  # noqa: F401  (registers infer and evaluate)
from palix.training import run_config


@gin.configurable
def job(fn=gin.REQUIRED):
  """Runs ``fn`` (a gin reference to a configured function) and returns its result."""
  return fn()


def run(argv):
  parser = argparse.ArgumentParser(prog="palix infer", description=__doc__.splitlines()[0])
  run_config.parse_run_flags(argv, parser)
  result = job()
  print(result if isinstance(result, str) else json.dumps(result, indent=1, sort_keys=True))
  return 0
