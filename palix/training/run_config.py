"""gin plumbing of the run files: required macros, unread flags, the config next to checkpoints.

Run files (``gin/runs/*.gin``) declare what an experiment must set as ``NAME = %gin.REQUIRED``.
gin itself only reports such a gap as ``MODEL_DIR/macro.value set to `%gin.REQUIRED` ...`` when
finalising, or not at all for an unused binding; ``check_required_macros`` names every unset macro
at once, with how to set it. ``--gin.`` flags that the run does not read are reported by name
(``palix.gin_usage``): a warning, or an error with ``--strict_gin``.
"""

import argparse
import dataclasses
import logging
import pathlib
import re
from typing import Dict, List, Optional, Sequence

import gin

from palix import config as palix_config
from palix import gin_usage
from palix.training import distributed

logger = logging.getLogger(__name__)


def unset_required_macros() -> List[str]:
  """Names of macros still bound to ``%gin.REQUIRED`` in the parsed config.

  Candidates are the ``NAME = %gin.REQUIRED`` lines of ``gin.config_str()``; each is confirmed with
  ``gin.query_parameter`` (a string value that merely contains that text is not a reference).
  """
  names = re.findall(r"^(?:[\w.]+/)*([A-Za-z_]\w*) = %gin\.REQUIRED$", gin.config_str(), re.M)
  return sorted({n for n in names if _is_required(n)})


def _is_required(macro: str) -> bool:
  value = gin.query_parameter(f"%{macro}")
  return isinstance(value, gin.config.ConfigurableReference) and repr(value) == "%gin.REQUIRED"


def check_required_macros() -> None:
  missing = unset_required_macros()
  if missing:
    flags = " ".join(f"--gin.{name}=..." for name in missing)
    raise palix_config.ConfigError(
        f"required gin macro(s) not set: {', '.join(missing)}. Set them in an experiment gin file "
        f"or on the command line ({flags}); string values need quotes, e.g. "
        "--gin.MODEL_DIR=\"'/tmp/run'\"")


@dataclasses.dataclass(frozen=True)
class CommandLineBindings:
  """The ``--gin.`` flags of this process's command, and whether an unread one is an error."""
  bindings: Sequence[str]
  strict: bool


_command_line: Optional[CommandLineBindings] = None  # set by parse_run_flags


def _report_unread(problems: Dict[str, str], strict: bool) -> None:
  if not problems:
    return
  if strict:
    raise palix_config.ConfigError("; ".join(problems.values()) + " (--strict_gin)")
  for problem in problems.values():
    logger.warning("%s (ignored; --strict_gin makes this an error)", problem)


def check_command_line_bindings_read() -> None:
  """Reports the command's ``--gin.`` flags that the run has not read; call it once the run's
  configurables have been called (the trainer does before its first step). No-op outside the CLI.

  Raises:
    palix.config.ConfigError: with ``--strict_gin``, naming every unread flag.
  """
  if _command_line is not None:
    _report_unread(gin_usage.unread_bindings(_command_line.bindings), _command_line.strict)


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


def add_check_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--strict_gin", action="store_true",
                      help="fail when a --gin.NAME=VALUE flag is not read by the run (default: "
                      "a warning naming it)")
  parser.add_argument("--dry_run", action="store_true",
                      help="check the flags, modules and gin files, print the parsed gin config "
                      "and exit without running")


def parse_run_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> argparse.Namespace:
  """gin files + ``--gin.X=V`` bindings, required-macro and unread-flag checks, finalize, then
  distributed init.

  Configuration errors (unknown configurables, unset required macros, missing files, values that
  do not parse, and with ``--strict_gin`` flags no binding reads) exit through ``parser.error``.
  With ``--dry_run`` the checked config is printed and the process exits (``SystemExit(0)``).
  """
  global _command_line
  try:
    bindings, rest = palix_config.split_gin_bindings(argv)
  except palix_config.ConfigError as e:
    parser.error(str(e))
  palix_config.add_gin_flags(parser)
  add_distributed_flags(parser)
  palix_config.add_module_flag(parser)
  add_check_flags(parser)
  args = parser.parse_args(rest)
  palix_config.import_modules(args.module, parser)
  if not args.gin_file:
    parser.error("at least one --gin_file is required (a model file, a run file from gin/runs/ "
                 "and your experiment settings)")
  show_palix_logs()
  try:
    palix_config.parse_gin(args.gin_file, bindings, args.gin_search_paths, finalize=False)
    check_required_macros()
    unreferenced = gin_usage.unreferenced_macros(bindings)
    _report_unread(unreferenced, args.strict_gin)
    gin.finalize()
  except (ValueError, FileNotFoundError, ImportError) as e:
    parser.error(str(e))
  if args.dry_run:
    print(gin.config_str(), end="")
    raise SystemExit(0)
  # Checked again once the run's configurables have been called, except those reported above.
  _command_line = CommandLineBindings(tuple(b for b in bindings if b not in unreferenced),
                                      args.strict_gin)
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
