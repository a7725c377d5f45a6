"""gin handling shared by every ``palix`` subcommand, in t5x's flag shape.

``--gin_file`` (repeatable), ``--gin.NAME=VALUE`` bindings and ``--gin_search_paths``. The repository's
``gin/`` folder is always on the search path, so ``--gin_file=models/vit/vit_b.gin`` and
``include 'models/vit/vit_b.gin'`` work from anywhere.
"""

import argparse
import contextlib
import importlib
import logging
import os
import pathlib
import re
import sys
import tokenize
from typing import List, Sequence, Tuple

import gin


def _gin_dir() -> pathlib.Path:
  """The gin configs: ``palix/gin/`` in an installed package (setup.py ships the checkout's
  top-level ``gin/`` there), else the checkout's ``gin/`` beside ``palix/`` (editable install;
  in site-packages that name is gin-config's own package, hence the installed folder first)."""
  package = pathlib.Path(__file__).resolve().parent
  installed = package / "gin"
  return installed if installed.is_dir() else package.parent / "gin"


GIN_DIR = _gin_dir()
_MAIN_BINDING = re.compile(r"^\s*__main__\.")


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file to parse (repeatable); relative paths also resolve under gin/")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="comma-separated folders searched for gin files and includes")


def add_module_flag(parser: argparse.ArgumentParser) -> None:
  """``--module M`` (repeatable): a module to import first, e.g. one registering your tasks."""
  parser.add_argument("--module", action="append", default=[],
                      help="import this module first, e.g. one that registers your own tasks "
                      "(found in the current folder or on PYTHONPATH); repeatable")


def import_modules(modules: Sequence[str], parser: argparse.ArgumentParser) -> None:
  """Imports ``--module`` modules, the current folder first on the path; a failure exits through
  ``parser.error`` naming the module.

  The current folder goes on the path only when there is a module to import: every folder on the
  path is also where gin looks for ``include 'runs/...'`` as a package resource (see
  ``ConfigError``).
  """
  if modules and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      parser.error(f"--module {module}: {e}")


class ConfigError(ValueError):
  """A gin file, include or ``--gin.`` binding that cannot be parsed; the message says where."""


def split_gin_bindings(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Separate ``--gin.NAME=VALUE`` flags (returned as ``NAME=VALUE``) from the other arguments."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin."):]
      if "=" not in binding:
        raise ConfigError(f"{arg}: a gin binding has the form --gin.NAME=VALUE")
      bindings.append(binding)
    else:
      rest.append(arg)
  return bindings, rest


def binding_name(binding: str) -> str:
  """``'trainer.train.seed'`` of ``'trainer.train.seed = 1'``: what a ``--gin.`` flag binds."""
  return binding.split("=", 1)[0].strip()


def _check_no_main_bindings(path: pathlib.Path) -> None:
  for lineno, line in enumerate(path.read_text().splitlines(), 1):
    if _MAIN_BINDING.match(line):
      raise ConfigError(f"{path}:{lineno}: gin files must not bind __main__ "
                        f"({line.strip()!r}); bind the configurable by its module name instead")


def _resolve(path: str, search_paths: Sequence[pathlib.Path]) -> pathlib.Path:
  candidate = pathlib.Path(path)
  if candidate.exists():
    return candidate
  for folder in search_paths:
    if (folder / path).exists():
      return folder / path
  raise FileNotFoundError(f"gin file {path!r} not found in the current folder or in "
                          f"{', '.join(str(p) for p in search_paths)}")


_SEARCH_PATHS = set()

# Errors gin raises while parsing a file or a binding (tokenize.TokenError: an unclosed bracket).
_PARSE_ERRORS = (ValueError, TypeError, SyntaxError, tokenize.TokenError, ImportError, OSError)


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = (), finalize: bool = True) -> None:
  """Parse gin files then bindings (later ones win), with gin/ and ``search_paths`` searched.

  Raises:
    FileNotFoundError: a ``gin_files`` entry is in none of the folders.
    ConfigError: a file or binding does not parse; the message names the file and line, or the
      ``--gin.`` flag (with the quoting hint for unquoted strings).
  """
  folders = [pathlib.Path(p) for entry in search_paths for p in entry.split(",") if p]
  folders.append(GIN_DIR)
  for folder in folders:
    if str(folder) not in _SEARCH_PATHS:  # gin keeps its search paths for the process
      gin.add_config_file_search_path(str(folder))
      _SEARCH_PATHS.add(str(folder))
  resolved = [_resolve(f, folders) for f in gin_files]
  for path in resolved:
    _check_no_main_bindings(path)
  with _quiet_include_probing():
    for path in resolved:
      try:
        gin.parse_config_file(str(path))
      except _PARSE_ERRORS as e:
        raise ConfigError(_file_error(e, path)) from e
  for binding in bindings:  # one at a time, so that an error names its flag
    try:
      gin.parse_config(binding)
    except _PARSE_ERRORS as e:
      raise ConfigError(_binding_error(e, binding)) from e
  if finalize:
    gin.finalize()



def model_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()):
  """The model that ``MODEL`` names in ``gin_files`` (and ``bindings``), built from a fresh gin
  configuration that is cleared again afterwards (e.g. a run's ``config.gin``)."""
  gin.clear_config()
  try:
    parse_gin(gin_files, bindings, finalize=False)
    return gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()

# The location gin appends to a parse error: '\n  In file "F", line N\n    TEXT' (or 'bindings
# string line N'), then a caret line.
_GIN_LOCATION = re.compile(
    r'\n\s*In (?:file "(?P<file>[^"]*)",|bindings string) line (?P<line>\d+)\n\s*(?P<text>[^\n]*)'
    r'(?:\n\s*\^)?')


def _split_location(e: BaseException):
  """``(message, file, line, statement)`` of a gin parse error (file/line/statement may be None)."""
  if isinstance(e, SyntaxError):
    text = (e.text or "").strip() or None
    return _parse_failure(e.msg), e.filename, e.lineno, text
  if isinstance(e, tokenize.TokenError):  # args: (message, (line, column))
    return f"{e.args[0]} (an unclosed bracket or quote?)", None, e.args[1][0] - 1 or None, None
  message = str(e)
  found = _GIN_LOCATION.search(message)
  if not found:
    return message.strip(), None, None, None
  message = (message[:found.start()] + message[found.end():]).strip()
  return message, found.group("file"), int(found.group("line")), found.group("text").strip()


def _parse_failure(message: str) -> str:
  """gin's SyntaxError text without Python's AST node repr: 'Failed to parse token 'runs''."""
  found = re.search(r"Failed to parse token .*", message or "")
  return found.group(0) if found else message


def _file_error(e: BaseException, path: pathlib.Path) -> str:
  message, where, line, statement = _split_location(e)
  where = where or str(path)
  shadow = _shadowing_folder(e, statement)
  if shadow:
    message = (f"{statement}: the current folder has a folder {shadow + '/'!r}, which gin tries as "
               f"a Python package before its search path; rename that folder or run palix from "
               f"another one (palix demo writes to out/)")
  elif isinstance(e, SyntaxError) and message.startswith("Failed to parse token"):
    message += f" in `{statement}`; a string value needs quotes, e.g. NAME = 'text'"
  elif statement and statement not in message:
    message = f"{message} (in `{statement}`)"
  location = f"{where}:{line}" if line else where
  return f"{location}: {' '.join(message.split())}"


def _shadowing_folder(e: BaseException, statement: str):
  """The current folder's folder that broke gin's lookup of ``include 'DIR/x.gin'``, if any.

  gin tries an include as ``DIR/x.gin`` under each search path and then as a resource of a Python
  package ``DIR``; a plain folder ``DIR`` in the current folder (a namespace package when the
  current folder is on ``sys.path``) makes that lookup fail with a TypeError.
  """
  found = re.match(r"include\s+['\"]([^/'\"]+)/", statement or "")
  if isinstance(e, TypeError) and found and os.path.isdir(found.group(1)):
    return found.group(1)
  return None


# An unquoted path or word, which gin reads as a (missing) name: the quoting mistake.
_BARE_WORD = re.compile(r"^[A-Za-z_./~][\w./~:-]*$")


def _binding_error(e: BaseException, binding: str) -> str:
  message, _, _, _ = _split_location(e)
  name, _, value = binding.partition("=")
  flag = f"--gin.{name.strip()}={value.strip()}"
  if isinstance(e, (SyntaxError, tokenize.TokenError)):
    message = f"{value.strip()!r} is not a gin value ({' '.join(str(message).split())})"
    if _BARE_WORD.match(value.strip()):
      message += (f"; a string needs quotes inside the shell's quotes: "
                  f"--gin.{name.strip()}=\"'{value.strip()}'\"")
    return f"{flag}: {message}"
  return f"{flag}: {' '.join(str(message).split())}"


class _DropPathNotFound(logging.Filter):

  def filter(self, record):
    return not record.getMessage().startswith("Path not found:")


@contextlib.contextmanager
def _quiet_include_probing():
  """gin logs "Path not found" for each search-path candidate it tries before the one that exists."""
  root = logging.getLogger()
  log_filter = _DropPathNotFound()
  root.addFilter(log_filter)
  try:
    yield
  finally:
    root.removeFilter(log_filter)
