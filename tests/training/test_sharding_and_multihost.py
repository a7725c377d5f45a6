"""Sharded training on 8 fake CPU devices and a two-process (gloo) run, against one device.

* ``single``: ``sharded_runs.py`` in one process with 8 devices: 6 steps on 1 device and on a
  (2, 2, 2) (data, fsdp, model) mesh.
* ``hosts`` (slow: about a minute of CPU): two processes of ``sharded_runs.py`` on 127.0.0.1 with 4
  devices each (8 global, the same mesh): 4 steps, then a second ``train`` call that restores the
  step-4 checkpoint collectively and runs to 6.
All runs see the same global batches, so their losses must agree.
"""

import json

import numpy as np
import pytest

import subprocesses

TIMEOUT_S = 900


def _result(log):
  lines = [l for l in log.read_text().splitlines() if l.startswith("RESULT ")]
  assert lines, subprocesses.tail(log)
  return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("sharding")


@pytest.fixture(scope="module")
def single(workdir):
  log = workdir / "single.log"
  proc = subprocesses.start(["tests/training/sharded_runs.py", str(workdir / "single")], log,
                            subprocesses.env(8, str(workdir / "jax_cache")))
  code = subprocesses.wait_all([proc], TIMEOUT_S)[0]
  assert code == 0, f"exited with {code}:\n{subprocesses.tail(log)}"
  return _result(log)


@pytest.fixture(scope="module")
def hosts(workdir):
  port = subprocesses.free_port()
  logs = [workdir / f"process{i}.log" for i in range(2)]
  procs = [subprocesses.start(
      ["tests/training/sharded_runs.py", str(workdir / "multihost"), f"--process_id={i}",
       "--num_processes=2", f"--port={port}"], log,
      subprocesses.env(4, str(workdir / "jax_cache"))) for i, log in enumerate(logs)]
  codes = subprocesses.wait_all(procs, TIMEOUT_S)
  for code, log in zip(codes, logs):
    assert code == 0, f"{log.name} exited with {code}:\n{subprocesses.tail(log)}"
  return {"results": [_result(log) for log in logs], "dir": workdir / "multihost"}


def test_mesh_222_matches_one_device_and_really_shards(single):
  one, mesh = single["one_device"], single["mesh"]
  assert single["num_devices"] == 8
  assert mesh["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
  assert one["mesh"] == {"data": 1, "fsdp": 1, "model": 1}
  assert len(one["losses"]) == len(mesh["losses"]) == 6
  np.testing.assert_allclose(mesh["losses"], one["losses"], rtol=1e-5)
  specs = mesh["specs"]
  assert specs["['decoder']['wi']['kernel']"] == "('fsdp', 'model')"
  assert specs["['decoder']['wo']['kernel']"] == "('model', 'fsdp')"
  assert specs["['decoder']['logits']['kernel']"] == "('fsdp', 'model')"
  assert specs["['encoder']['image_proj']['kernel']"] == "(None, 'fsdp')"
  assert specs["opt_mu_decoder_wi_kernel"] == "('fsdp', 'model')"  # Adam moments follow params


@pytest.mark.slow
def test_two_processes_train_restore_and_match_one_process(single, hosts):
  model_dir, hosts = hosts["dir"], hosts["results"]
  assert sorted(h["process_index"] for h in hosts) == [0, 1]
  assert sorted(h["shard_index"] for h in hosts) == [0, 1]  # each reads its own data shard
  for h in hosts:
    assert (h["process_count"], h["global_devices"], h["local_devices"]) == (2, 8, 4)
    assert h["num_shards"] == 2
    assert (h["steps_after_first"], h["final_step"]) == (4, 6)
    assert h["wi_kernel_spec"] == "('fsdp', 'model')"
  assert hosts[0]["wi_kernel_sum"] == hosts[1]["wi_kernel_sum"]
  lines = (model_dir / "metrics.jsonl").read_text().splitlines()
  losses = [json.loads(l)["loss"] for l in lines]
  assert [json.loads(l)["step"] for l in lines] == [1, 2, 3, 4, 5, 6]
  # Steps 5-6 ran after a collective restore; all six match the single-process run.
  np.testing.assert_allclose(losses, single["mesh"]["losses"], rtol=1e-5)
  saved = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved == [2, 4, 6]
