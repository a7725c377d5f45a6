"""``palix params``: the real command on ViT-22B, and a clear error for an unknown scale."""

import pathlib
import re
import subprocess
import sys

import gin
import pytest

from palix.cli import params

REPO = pathlib.Path(__file__).resolve().parents[2]


def vit22b_closed_form():
  """Parallel blocks (papers.md §1, §2.7): d=6144, 48 layers, mlp 24576, 48 heads, patch 14."""
  d, depth, mlp, heads, patch, image = 6144, 48, 24576, 48, 14, 224
  block = d + d * (3 * d + mlp) + mlp + 2 * (d // heads) + (d + mlp) * d + d
  embeddings = patch * patch * 3 * d + d + (image // patch) ** 2 * d
  return depth * block + embeddings + d


def test_params_cli_vit22b():
  result = subprocess.run(
      [sys.executable, "-m", "palix.cli.main", "params", "--gin_file=gin/models/vit/vit_22b.gin"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  last = result.stdout.strip().splitlines()[-1]
  assert last.startswith("total_params: ")
  total = int(last.split(": ")[1])
  assert 21.6e9 <= total <= 21.8e9
  assert total == vit22b_closed_form()
  assert "Transformer" in result.stdout and "forward_flops_per_example" in result.stdout


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_unknown_scale_names_the_valid_ones(clean_gin, tmp_path, capsys):
  bad = tmp_path / "vit_q.gin"
  bad.write_text("include 'models/vit/base.gin'\nVIT_SCALE = 'Q'\nVIT_PATCH_SIZE = 16\n")
  assert params.run([f"--gin_file={bad}"]) == 2
  message = capsys.readouterr().err
  assert "unknown ViT scale 'Q'" in message
  listed = re.search(r"expected one of (.*?), optionally", message)
  assert listed, message
  assert {"Ti", "S", "B", "L", "H", "g", "G", "e", "22B"} <= set(listed.group(1).split(", "))


def test_flags_that_nothing_reads_are_named_after_the_counts(clean_gin, capsys):
  assert params.run(["--gin_file=models/vit/vit_ti.gin", "--gin.VIT_PATCHSIZE=32",
                     "--gin.ViTConfig.qk_norm=True", "--gin.schedules.cosine.warmup_steps=3",
                     "--gin_file=runs/pretrain.gin"]) == 0
  out, err = capsys.readouterr()
  # Patch 16 as in vit_ti.gin: the misspelt flag changed nothing.
  assert out.strip().splitlines()[-1] == "total_params: 5527104"
  assert err.strip().splitlines() == [
      "palix params: warning: --gin.VIT_PATCHSIZE=32: no gin binding of this run reads the macro "
      "VIT_PATCHSIZE; did you mean VIT_PATCH_SIZE?",
      "palix params: warning: --gin.schedules.cosine.warmup_steps=3: this run never called "
      "schedules.cosine, so the binding has no effect"]
