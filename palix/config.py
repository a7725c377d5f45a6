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
from typing import List, Sequence, Tuple

import gin
from gin import resource_reader as gin_resource_reader


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
  ``parser.error`` naming the module."""
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      parser.error(f"--module {module}: {e}")


def split_gin_bindings(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Separate ``--gin.NAME=VALUE`` flags (returned as ``NAME=VALUE``) from the other arguments."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin."):]
      if "=" not in binding:
        raise SystemExit(f"error: {arg!r} must have the form --gin.NAME=VALUE")
      bindings.append(binding)
    else:
      rest.append(arg)
  return bindings, rest


def _check_no_main_bindings(path: pathlib.Path) -> None:
  for lineno, line in enumerate(path.read_text().splitlines(), 1):
    if _MAIN_BINDING.match(line):
      raise ValueError(f"{path}:{lineno}: gin files must not bind __main__ "
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


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = (), finalize: bool = True) -> None:
  """Parse gin files then bindings (later ones win), with gin/ and ``search_paths`` searched."""
  folders = [pathlib.Path(p) for entry in search_paths for p in entry.split(",") if p]
  folders.append(GIN_DIR)
  for folder in folders:
    gin.add_config_file_search_path(str(folder))
  _guard_package_resource_lookup()
  resolved = [_resolve(f, folders) for f in gin_files]
  for path in resolved:
    _check_no_main_bindings(path)
  with _quiet_include_probing():
    gin.parse_config_files_and_bindings([str(p) for p in resolved], list(bindings),
                                        finalize_config=finalize)


def _package_resource_exists(config_path: str) -> bool:
  """gin's package-resource existence check, without its crash on namespace packages.

  For ``include 'runs/eval.gin'`` gin first tries ``runs/eval.gin`` in the current folder, then as a
  resource of a package ``runs``. A plain folder ``runs/`` in the current folder (say, a training
  run's output) imports as a namespace package with no ``__init__.py``; gin then calls
  ``os.path.dirname(None)`` and the TypeError ends the parse before the gin/ search path is tried.
  """
  try:
    return gin_resource_reader.system_path_file_exists(config_path)
  except TypeError:
    return False


def _guard_package_resource_lookup() -> None:
  """Swaps gin's package-resource existence check for ``_package_resource_exists`` (idempotent).

  gin has no public way to replace a registered reader, so this edits its reader list in place.
  """
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  for index, (reader, exists) in enumerate(readers):
    if exists is gin_resource_reader.system_path_file_exists:
      readers[index] = (reader, _package_resource_exists)


class _DropPathNotFound(logging.Filter):

  def filter(self, record):
    return not record.getMessage().startswith("Path not found:")


@contextlib.contextmanager
def _quiet_include_probing():
  """gin logs "Path not found" for every search-path candidate it tries before the one that exists."""
  root = logging.getLogger()
  log_filter = _DropPathNotFound()
  root.addFilter(log_filter)
  try:
    yield
  finally:
    root.removeFilter(log_filter)
