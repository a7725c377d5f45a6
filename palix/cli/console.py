"""What a ``palix`` command shows on the console: its own output, and an error as one line.

``configure_library_logs`` runs before any subcommand imports JAX or TensorFlow: on a CPU machine
their C++ start-up lines (``Could not find cuda drivers``, ``failed call to cuInit``, oneDNN notes,
``Local rendezvous is aborting`` after a data error) are not palix's output. ``--verbose`` (or
``--debug``) keeps them.

``error_line`` turns an exception into ``palix CMD: error: MESSAGE``; ``--debug`` (or
``PALIX_DEBUG=1``) prints the traceback as well.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
from typing import List, Tuple

from palix import config as palix_config

GLOBAL_FLAGS = {"--debug": "print tracebacks (also PALIX_DEBUG=1) and library logs",
                "--verbose": "keep the libraries' own log lines (TensorFlow, XLA, absl)"}

# Errors a user causes and fixes (data, paths, configuration, values); any other exception type is
# shown with its name, as it may be a bug.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
CONFIG_EXIT_CODE = 2  # argparse's code for bad flags; gin configuration errors share it
INTERRUPTED_EXIT_CODE = 130


def pop_global_flags(argv: List[str]) -> Tuple[List[str], bool, bool]:
  """``(argv without them, debug, verbose)`` for ``--debug`` / ``--verbose`` anywhere in argv."""
  debug = "--debug" in argv or os.environ.get("PALIX_DEBUG", "") not in ("", "0")
  verbose = debug or "--verbose" in argv
  return [a for a in argv if a not in GLOBAL_FLAGS], debug, verbose


def configure_library_logs(verbose: bool) -> None:
  """Hides TensorFlow's and XLA's C++ logs unless ``verbose``; call before they are imported.

  ``TF_CPP_MIN_LOG_LEVEL`` (read by TensorFlow and XLA; 3: fatal only, 0: everything) is set
  unless the environment already sets it, so the data layer's own default
  (``palix.tasks.tf_setup``) does not apply. The lines TensorFlow's libraries print while they load
  come before any log level applies, so when quiet, the first ``import tensorflow`` runs with
  stderr pointed at /dev/null (Python errors of the import still propagate as exceptions).
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
  if verbose:
    return
  if "tensorflow" not in sys.modules and not any(
      isinstance(f, _QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport("tensorflow"))


class _QuietImport(importlib.abc.MetaPathFinder):
  """Finds ``name`` with the other finders and loads it with file descriptor 2 silenced (once)."""

  def __init__(self, name: str):
    self.name = name

  def find_spec(self, fullname, path=None, target=None):  # pylint: disable=unused-argument
    if fullname != self.name:
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is not None and spec.loader is not None:
      spec.loader = _SilencedLoader(spec.loader)
    return spec


class _SilencedLoader(importlib.abc.Loader):

  def __init__(self, loader):
    self.loader = loader

  def create_module(self, spec):
    return self.loader.create_module(spec)

  def exec_module(self, module):
    with _stderr_to_devnull():
      self.loader.exec_module(module)


@contextlib.contextmanager
def _stderr_to_devnull():
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


# gin appends '\n  In call to configurable 'NAME' (<function ...>)' for each configurable an
# exception passes through; the innermost one says where a bad value was bound.
_GIN_CALL = re.compile(r"\n\s*In call to configurable '([^']+)' \([^\n]*\)")


def error_line(prog: str, error: BaseException) -> str:
  """``'palix train: error: MESSAGE'``; a multi-line message (a list of parameters) keeps its
  lines, so that the last line names the last item."""
  message = str(error)
  configurables = _GIN_CALL.findall(message)
  message = _GIN_CALL.sub("", message).strip() or type(error).__name__
  if not isinstance(error, USER_ERRORS):
    first, *rest = message.split("\n")
    where = f" in gin configurable {configurables[0]!r}" if configurables else ""
    message = "\n".join([f"{type(error).__name__}{where}: {first} (rerun with --debug for the "
                          "traceback)"] + rest)
  return f"{prog}: error: {message}"


def exit_code(error: BaseException) -> int:
  return CONFIG_EXIT_CODE if isinstance(error, palix_config.ConfigError) else 1


def end_process(code: int) -> None:
  """Ends the process now, after flushing the console: no clean-up of the libraries runs at
  interpreter shutdown (an error may leave tf.data or Orbax threads that could hang it). The
  trainer has closed its checkpoints and metric files before the error reached here."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
