"""gin plumbing of the run files: required macros and the config written next to the checkpoints.

Run files (``gin/runs/*.gin``) declare what an experiment must set as ``NAME = %gin.REQUIRED``.
gin itself only reports such a gap as ``MODEL_DIR/macro.value set to `%gin.REQUIRED` ...`` when
finalising, or not at all for an unused binding; ``check_required_macros`` names every unset macro
at once, with how to set it.
"""

import argparse
import logging
import pathlib
from typing import List, Sequence

import gin

from palix import config as palix_config
from palix.training import distributed

_MACRO_SELECTOR = "gin.macro"


def _is_required(value) -> bool:
  if not isinstance(value, gin.config.ConfigurableReference):
    return False
  constant = gin.config._retrieve_constant  # pylint: disable=protected-access
  if value.configurable.wrapped != constant:
    return False
  return value.scoped_configurable_fn() is gin.REQUIRED


def unset_required_macros() -> List[str]:
  """Names of macros still bound to ``%gin.REQUIRED`` in the parsed config."""
  missing = []
  for (scope, selector), bindings in gin.config._CONFIG.items():  # pylint: disable=protected-access
    if selector == _MACRO_SELECTOR and _is_required(bindings.get("value")):
      missing.append(scope)
  return sorted(missing)


def check_required_macros() -> None:
  missing = unset_required_macros()
  if missing:
    flags = " ".join(f"--gin.{name}=..." for name in missing)
    raise ValueError(f"required gin macro(s) not set: {', '.join(missing)}. Set them in an "
                     f"experiment gin file or on the command line ({flags}); string values need "
                     "quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")


def write_config(model_dir: str) -> None:
  """``config.gin``: the operative config (what the run used); ``config_full.gin``: all of it."""
  folder = pathlib.Path(model_dir)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.gin").write_text(gin.operative_config_str())
  (folder / "config_full.gin").write_text(gin.config_str())


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
  """t5x's multi-process flags (they override ``distributed.initialize`` gin bindings)."""
  parser.add_argument("--coordinator_address", default=None,
                      help="host:port of process 0, for multi-process (multi-host) runs")
  parser.add_argument("--num_processes", type=int, default=None, help="number of processes")
  parser.add_argument("--process_id", type=int, default=None, help="this process's index")


def parse_run_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> argparse.Namespace:
  """gin files + ``--gin.X=V`` bindings, required-macro check, finalize, then distributed init.

  Configuration errors (unknown configurables, unset required macros, missing files) exit through
  ``parser.error`` with gin's or our message.
  """
  bindings, rest = palix_config.split_gin_bindings(argv)
  palix_config.add_gin_flags(parser)
  add_distributed_flags(parser)
  palix_config.add_module_flag(parser)
  args = parser.parse_args(rest)
  palix_config.import_modules(args.module, parser)
  if not args.gin_file:
    parser.error("at least one --gin_file is required (a model file, a run file from gin/runs/ "
                 "and your experiment settings)")
  try:
    palix_config.parse_gin(args.gin_file, bindings, args.gin_search_paths, finalize=False)
    check_required_macros()
    gin.finalize()
  except (ValueError, FileNotFoundError, ImportError) as e:
    parser.error(str(e))
  show_palix_logs()
  overrides = {k: getattr(args, k) for k in ("coordinator_address", "num_processes", "process_id")
               if getattr(args, k) is not None}
  distributed.initialize(**overrides)
  return args


def show_palix_logs(level: int = logging.INFO) -> None:
  """palix's own log lines (resume, restores, partitioning notes) on stderr; other libraries' stay
  at their defaults. Records still propagate, so handlers on the root logger see them too."""
  palix_logger = logging.getLogger("palix")
  palix_logger.setLevel(level)
  if not palix_logger.handlers and not logging.getLogger().handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    palix_logger.addHandler(handler)
