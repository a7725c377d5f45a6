"""Runs the tiny model on several meshes and prints JSON (used by test_sharding_and_multihost.py).

``python sharded_runs.py OUT_DIR`` expects 8 (fake) CPU devices. ``python sharded_runs.py OUT_DIR
--process_id=I --num_processes=N --port=P`` is one process of a multi-process run (each with its own
fake devices): it trains ``MULTIHOST_STEPS[0]`` steps, then calls ``train`` again with more steps,
which restores the last checkpoint collectively and continues.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import tiny_trainable_model as tiny  # noqa: E402
from palix import partitioning  # noqa: E402
from palix.training import distributed, optimizers, schedules, synthetic_data, trainer  # noqa: E402

STEPS = 6
MULTIHOST_STEPS = (4, STEPS)  # train 4 steps, then restore and continue to STEPS
MESH = (2, 2, 2)


def train(model_dir, partitioner, steps, checkpoint_period=2):
  model = tiny.TinyModel(tiny.TinyConfig(dropout_rate=0.1))
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(3e-3), base=optimizers.adamw,
                             clip_grad_norm=1.0)
  return trainer.train(
      model=model, model_dir=model_dir, train_steps=steps, batch_size=8,
      mixture_or_task_name=synthetic_data.TASK_NAME,
      task_feature_lengths={"inputs": 4, "targets": 4},
      get_batches_fn=synthetic_data.synthetic_batches, optimizer=opt, partitioner=partitioner,
      checkpoint_period=checkpoint_period, log_period=1, progress_bar=False)


def losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def specs(state):
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  out = {jax.tree_util.keystr(p): str(tuple(x.sharding.spec)) for p, x in flat}
  mu = state.opt_state[1].inner_states["default"].inner_state[0].mu
  out["opt_mu_decoder_wi_kernel"] = str(tuple(mu["decoder"]["wi"]["kernel"].sharding.spec))
  return out


def single_process(out_dir):
  devices = jax.devices()
  results = {"num_devices": len(devices)}
  for name, shape, devs in [("one_device", (1, 1, 1), devices[:1]), ("mesh", MESH, devices)]:
    model_dir = os.path.join(out_dir, name)
    state = train(model_dir, partitioning.Partitioner(mesh_shape=shape, devices=devs), STEPS,
                  checkpoint_period=STEPS)
    results[name] = {"losses": losses(model_dir), "specs": specs(state),
                     "mesh": dict(state.params["decoder"]["wi"]["kernel"].sharding.mesh.shape)}
  print("RESULT " + json.dumps(results))


def multi_process(out_dir, process_id, num_processes, port):
  distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                         process_id=process_id, initialization_timeout=60)
  partitioner = partitioning.Partitioner(mesh_shape=MESH)
  layout = partitioner.data_layout(8)
  first = train(out_dir, partitioner, MULTIHOST_STEPS[0])
  steps_after_first = int(jax.device_get(first.step))
  del first
  state = train(out_dir, partitioning.Partitioner(mesh_shape=MESH), MULTIHOST_STEPS[1])
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(state.params["decoder"]["wi"]["kernel"],
                                               tiled=True)
  print("RESULT " + json.dumps({
      "process_index": jax.process_index(), "process_count": jax.process_count(),
      "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
      "shard_index": layout.shard_index, "num_shards": layout.num_shards,
      "steps_after_first": steps_after_first, "final_step": int(jax.device_get(state.step)),
      "wi_kernel_sum": float(np.asarray(gathered, np.float64).sum()),
      "wi_kernel_spec": str(tuple(state.params["decoder"]["wi"]["kernel"].sharding.spec)),
  }))


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("out_dir")
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--port", type=int)
  args = parser.parse_args()
  if args.process_id is None:
    single_process(args.out_dir)
  else:
    multi_process(args.out_dir, args.process_id, args.num_processes, args.port)
