"""``palix.config``: the ``--module`` flag shared by palix train/infer/eval/data."""

import argparse
import sys

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
