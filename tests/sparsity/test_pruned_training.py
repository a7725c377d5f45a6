"""Pruned training through ``palix.training.trainer.train`` on 8 fake devices (a subprocess):
the (2, 2, 2) mesh with a save/restore gives the same masks and losses as one device; then
``palix params --checkpoint`` and ``palix sparsity export-nm`` read the pruned checkpoint."""

import json

import numpy as np
import pytest

import subprocesses
from palix.cli import params as params_cli
from palix.cli import sparsity as sparsity_cli
from palix.sparsity import nm_export


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pruned")
  log = workdir / "runs.log"
  proc = subprocesses.start(["tests/sparsity/pruned_runs.py", str(workdir)], log,
                            subprocesses.env(8, str(workdir / "jax_cache")))
  code = subprocesses.wait_all([proc], 900)[0]
  assert code == 0, f"exited with {code}:\n{subprocesses.tail(log)}"
  line = [l for l in log.read_text().splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):]), workdir


def test_sharded_resumed_run_has_the_one_device_masks(runs):
  results, _ = runs
  one, mesh = results["one_device"], results["mesh_resumed"]
  assert results["num_devices"] == 8
  assert one["masks"].keys() == mesh["masks"].keys()
  for path in one["masks"]:
    np.testing.assert_array_equal(one["masks"][path], mesh["masks"][path], err_msg=path)
  np.testing.assert_allclose(mesh["losses"], one["losses"], rtol=1e-5)
  assert len(mesh["losses"]) == 8
  assert one["zeros_match_masks"] and mesh["zeros_match_masks"]
  # Masks are sharded like their parameters (the partitioner matches them by path).
  assert mesh["mask_specs"]["decoder/wi/kernel"] == "('fsdp', 'model')"
  for path, mask in one["masks"].items():
    mask = np.asarray(mask)
    assert np.all(mask.reshape(mask.shape[0] // 4, 4, -1).sum(1) == 2), path


def test_params_cli_counts_the_pruned_checkpoint(runs, capsys):
  results, workdir = runs
  assert params_cli.run([f"--checkpoint={workdir / 'mesh' / 'checkpoints'}"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  total = int(lines[-1].split(": ")[1])
  nonzero = int(lines[-2].split(": ")[1])
  pruned = sum(np.size(m) for m in results["mesh_resumed"]["masks"].values())
  assert nonzero == total - pruned // 2  # 2:4 zeroes half of every pruned tensor
  assert params_cli.run([f"--checkpoint={workdir / 'nowhere'}"]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_export_nm_masks_of_the_checkpoint(runs, tmp_path, capsys):
  results, workdir = runs
  out = tmp_path / "masks"
  assert sparsity_cli.run(["export-nm", f"--checkpoint={workdir / 'mesh' / 'checkpoints'}",
                           f"--out={out}"]) == 0
  assert "exported 6 2:4 masks" in capsys.readouterr().out
  loaded = nm_export.load_nm_masks(str(out))
  for path, mask in results["mesh_resumed"]["masks"].items():
    np.testing.assert_array_equal(loaded[path], np.asarray(mask, bool), err_msg=path)
