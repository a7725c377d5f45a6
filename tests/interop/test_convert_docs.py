"""Every ``palix`` command and Python snippet of docs/convert.md runs, in order, on stand-ins for
the downloaded checkpoints it names (tiny files of the same formats at the same relative places)."""

import pathlib
import re

import gin
import numpy as np
import pytest

from palix.cli import main as cli_main

from big_vision_files import random_vit_arrays
from t5x_files import random_hf_weights, t5x_target, write_legacy, write_orbax

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "convert.md"

transformers = pytest.importorskip("transformers")


def _stand_ins(root):
  """The checkpoints the page names, as tiny files of the same formats under ``root``."""
  sd = random_hf_weights()
  write_legacy(root / "data/t5x/t5_1_1_small/checkpoint_1000000", t5x_target(sd))
  write_orbax(root / "data/t5x/ul2", t5x_target(sd, scan_axis=1), step=2650000)
  (root / "data/big_vision").mkdir(parents=True)
  np.savez(root / "data/big_vision/siglip_so400m_224.npz",
           **{f"params/img/{k}": v for k, v in random_vit_arrays(0, pool="map").items()})
  np.savez(root / "data/big_vision/vit_b16_i21k.npz",
           **random_vit_arrays(1, cls=True, old_posemb=True, pool="none", head=True))


def test_every_command_of_the_page_runs(tmp_path, capsys):
  _stand_ins(tmp_path)
  (tmp_path / "tmp").mkdir()
  ran = []
  blocks = re.findall(r"^```([^\n]*)\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
  for language, block in blocks:
    text = block.replace("/tmp/", f"{tmp_path}/tmp/").replace("/data/", f"{tmp_path}/data/")
    snippet = re.match(r'\.venv/bin/python -c "\n(.*?)\n"\n', text, flags=re.S)
    if snippet or language == "python":  # the page's own Python
      gin.clear_config()
      try:
        exec(snippet.group(1) if snippet else text, {})  # pylint: disable=exec-used
      finally:
        gin.clear_config()
      ran.append("python")
    for line in text.replace("\\\n", " ").splitlines():
      match = re.match(r"\s*\.venv/bin/palix\s+(\S+)(.*)", line)
      if not match or match.group(1).endswith(":"):
        continue
      gin.clear_config()
      try:
        code = cli_main.main([match.group(1)] + match.group(2).split())
      finally:
        gin.clear_config()
      assert code == 0, (line, capsys.readouterr().err[-2000:])
      ran.append(line.split()[1] + " " + line.split()[2])
  assert ran.count("convert --from=t5x") == 2 and ran.count("convert --from=big_vision") == 2
  assert "convert --to=hf" in ran and ran.count("python") == 2
  assert (tmp_path / "tmp/siglip_img/config.gin").read_text().count("ClassifierModel") >= 1
