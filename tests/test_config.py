"""``palix.config`` and ``palix.training.run_config``: the ``--module`` flag, gin parse errors that
name their file, line or flag, required macros, and gin's public API only."""

import argparse
import importlib.util
import pathlib
import re
import sys

import gin
import pytest

from palix import config as palix_config
from palix.training import run_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _parser():
  parser = argparse.ArgumentParser(prog="palix test")
  palix_config.add_module_flag(parser)
  return parser


def test_modules_import_from_the_current_folder(tmp_path, monkeypatch):
  (tmp_path / "my_registering_module.py").write_text("REGISTERED = ['my_task']\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  parser = _parser()
  args = parser.parse_args(["--module", "my_registering_module"])
  palix_config.import_modules(args.module, parser)
  assert sys.modules["my_registering_module"].REGISTERED == ["my_task"]
  del sys.modules["my_registering_module"]


def test_a_missing_module_is_named_in_the_error(capsys):
  parser = _parser()
  with pytest.raises(SystemExit) as info:
    palix_config.import_modules(["no_such_module_xyz"], parser)
  assert info.value.code == 2
  assert "--module no_such_module_xyz: No module named 'no_such_module_xyz'" in capsys.readouterr().err


def test_a_runs_folder_that_shadows_an_include_is_named(tmp_path, monkeypatch):
  """gin looks for ``include 'runs/x.gin'`` as a resource of a Python package ``runs`` before its
  search path; a plain ``runs/`` folder in the current folder (a namespace package when the folder
  is on ``sys.path``) breaks that lookup. The error names the folder and the include (palix demo
  writes to out/, so it no longer creates such a folder itself)."""
  (tmp_path / "runs" / "demo").mkdir(parents=True)
  experiment = tmp_path / "finetune_experiment.gin"
  experiment.write_text("include 'runs/pretrain.gin'\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "runs", raising=False)
  assert importlib.util.find_spec("runs").origin is None  # the namespace package that breaks gin
  gin.clear_config()
  try:
    with pytest.raises(palix_config.ConfigError) as info:
      palix_config.parse_gin([str(experiment)], finalize=False)
  finally:
    gin.clear_config()
    sys.modules.pop("runs", None)
  assert str(info.value) == (
      f"{experiment}:1: include 'runs/pretrain.gin': the current folder has a folder 'runs/', "
      "which gin tries as a Python package before its search path; rename that folder or run "
      "palix from another one (palix demo writes to out/)")


def test_includes_resolve_from_a_folder_that_is_not_on_the_path(tmp_path, monkeypatch):
  """The same ``runs/`` folder is harmless when the current folder is not on ``sys.path`` (the
  ``palix`` console script without ``--module``)."""
  (tmp_path / "runs" / "demo").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  gin.clear_config()
  try:
    palix_config.parse_gin(["runs/finetune.gin"], finalize=False)
    # finetune.gin is pretrain.gin (an include) plus INITIAL_CHECKPOINT_PATH.
    assert gin.query_parameter("%SEED") == 0
  finally:
    gin.clear_config()


@pytest.mark.parametrize("binding, message", [
    ("MODEL_DIR=runs/x", "--gin.MODEL_DIR=runs/x: 'runs/x' is not a gin value (Failed to parse "
                         "token 'runs'); a string needs quotes inside the shell's quotes: "
                         "--gin.MODEL_DIR=\"'runs/x'\""),
    ("MODEL_DIR=/tmp/x", "--gin.MODEL_DIR=\"'/tmp/x'\""),
    ("TASK_FEATURE_LENGTHS={'inputs': 8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 8: "
                                           "\"{'inputs': 8\" is not a gin value (EOF in "
                                           "multi-line statement (an unclosed bracket or quote?))"),
    ("trainr.train.seed=3", "--gin.trainr.train.seed=3: No configurable matching 'trainr.train'."),
])
def test_a_bad_binding_names_its_flag(binding, message):
  gin.clear_config()
  try:
    with pytest.raises(palix_config.ConfigError) as info:
      palix_config.parse_gin(["runs/pretrain.gin"], [binding], finalize=False)
  finally:
    gin.clear_config()
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_a_bad_line_of_a_gin_file_names_the_file_and_line(tmp_path):
  bad = tmp_path / "experiment.gin"
  bad.write_text("import palix.training.trainer\n\nMODEL_DIR = runs/x\n")
  gin.clear_config()
  try:
    with pytest.raises(palix_config.ConfigError) as info:
      palix_config.parse_gin([str(bad)], finalize=False)
  finally:
    gin.clear_config()
  assert str(info.value) == (f"{bad}:3: Failed to parse token 'runs' in `MODEL_DIR = runs/x`; a "
                             "string value needs quotes, e.g. NAME = 'text'")


def test_required_macros_are_found_with_public_gin_calls():
  gin.clear_config()
  try:
    gin.parse_config(["A = %gin.REQUIRED", "B = %gin.REQUIRED", "C = 'A = %gin.REQUIRED'",
                      "D = %A", "B = 3"])
    assert run_config.unset_required_macros() == ["A"]  # B is set; C is a string; D refers to A
  finally:
    gin.clear_config()


# Private gin state (gin.config._CONFIG, gin.config._FILE_READERS, _retrieve_constant, ...) changes
# between gin releases; palix uses gin's public API only.
_PRIVATE_GIN = re.compile(r"\bgin(?:\.\w+)*\._\w+|from gin(?:\.\w+)* import [^\n]*\b_\w+")


def test_no_private_gin_attributes_anywhere():
  offenders = []
  for folder in ("palix", "tasks", "eval", "tests"):
    for path in sorted((REPO / folder).rglob("*.py")):
      for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _PRIVATE_GIN.search(line) and path != pathlib.Path(__file__):
          offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


def test_the_private_gin_pattern_finds_what_it_should():
  for line in ("readers = gin.config._FILE_READERS", "gin.config._CONFIG.items()",
               "gin._something()", "from gin.config import _retrieve_constant",
               "from gin import config, _x"):
    assert _PRIVATE_GIN.search(line), line
  for line in ("gin.config.ConfigurableReference", "gin.query_parameter('%X')",
               "gin_resource_reader.system_path_file_exists", "os._exit(1)"):
    assert not _PRIVATE_GIN.search(line), line
