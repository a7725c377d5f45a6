"""``palix.config``: the ``--module`` flag shared by palix train/infer/eval/data."""

import argparse
import importlib.util
import sys

import gin
import pytest

from palix import config as palix_config


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


def test_includes_resolve_when_the_current_folder_has_a_runs_folder(tmp_path, monkeypatch):
  """`make demo` writes its run into ./runs/demo; gin/runs/*.gin includes must still resolve.

  With the current folder on sys.path (as under the editable install), a plain ``runs/`` folder
  imports as a namespace package, on which gin's package-resource lookup used to crash.
  """
  (tmp_path / "runs" / "demo").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "runs", raising=False)
  assert importlib.util.find_spec("runs").origin is None  # the namespace package that broke gin
  gin.clear_config()
  try:
    palix_config.parse_gin(["runs/eval_benchmarks.gin"], finalize=False)
    # eval_benchmarks.gin is only `include 'runs/eval.gin'`: its bindings prove the include ran.
    assert gin.query_parameter("%SPLIT") == "validation"
  finally:
    gin.clear_config()
    sys.modules.pop("runs", None)
