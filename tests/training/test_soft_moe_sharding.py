"""Soft MoE experts sharded by the logical rules on 8 fake CPU devices train like one device.

``soft_moe_sharded_runs.py`` (a subprocess with 8 devices) trains a tiny scanned Soft MoE ViT
classifier for 4 Adam steps on one device and on a (2, 2, 2) (data, fsdp, model) mesh.
"""

import json

import numpy as np
import pytest

import subprocesses

TIMEOUT_S = 600


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("soft_moe_sharding")
  log = workdir / "runs.log"
  proc = subprocesses.start(["tests/training/soft_moe_sharded_runs.py"], log,
                            subprocesses.env(8))
  code = subprocesses.wait_all([proc], TIMEOUT_S)[0]
  assert code == 0, f"exited with {code}:\n{subprocesses.tail(log)}"
  lines = [l for l in log.read_text().splitlines() if l.startswith("RESULT ")]
  assert lines, subprocesses.tail(log)
  return json.loads(lines[-1][len("RESULT "):])


def test_expert_sharded_mesh_matches_one_device(runs):
  one, mesh = runs["one_device"], runs["mesh"]
  assert runs["num_devices"] == 8 and mesh["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
  np.testing.assert_allclose(mesh["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(mesh["dispatch_max"], one["dispatch_max"], rtol=1e-5)
  assert len(set(one["losses"])) == len(one["losses"])  # it trained (losses change)


def test_experts_follow_the_expert_rule(runs):
  """Scanned layers first, then experts on ``data`` (the ``expert`` rule), the width on ``fsdp``
  and the MLP width on ``model``; dispatch and combine reach the experts by all-to-all."""
  specs = runs["mesh"]["specs"]
  assert specs["wi_kernel"] == "(None, 'data', 'fsdp', 'model')"
  assert specs["wo_kernel"] == "(None, 'data', 'model', 'fsdp')"
  assert specs["mu"] == "(None, 'fsdp', 'data', None)"
  assert runs["mesh"]["all_to_all"] and not runs["one_device"]["all_to_all"]
