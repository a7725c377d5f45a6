"""``palix train --gin_file=MODEL.gin --gin_file=runs/pretrain.gin [--gin.NAME=VALUE ...]``.

Runs ``palix.training.trainer.train`` as configured by gin (model file, run file, experiment
settings; see docs/training.md). Multi-process runs add ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` on every process.
"""

import argparse

from palix.training import run_config
from palix.training import trainer


def run(argv):
  parser = argparse.ArgumentParser(prog="palix train", description=__doc__.splitlines()[0])
  run_config.parse_run_flags(argv, parser)
  trainer.train()  # errors (a data error, NaN loss, ...): one line, by palix.cli.main
  return 0
