"""Pruned training of the tiny model on one device and on a (2, 2, 2) mesh with a resume; prints
JSON (used by test_pruned_training.py). ``python pruned_runs.py OUT_DIR`` expects 8 fake devices.

Iterative 2:4 pruning with the cubic schedule over 8 steps (updates at t = 2, 4, 6). The mesh run
stops after 5 steps and resumes to 8: step 6 (t = 5) is not a mask update, so it must use the
restored masks; recomputed or reset masks would change the trajectory.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import tiny_trainable_model as tiny  # noqa: E402
from palix import partitioning, sparsity  # noqa: E402
from palix.training import optimizers, param_paths, schedules, synthetic_data, trainer  # noqa: E402

STEPS = 8
MESH = (2, 2, 2)


def train(model_dir, partitioner, steps, checkpoint_period):
  pruning = sparsity.Pruning(structure=sparsity.IterativeNM(2, 4, axis=0),
                             schedule=sparsity.GradualSchedule(total_steps=STEPS, update_every=2))
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(3e-3), base=optimizers.adamw,
                             clip_grad_norm=1.0, sparsity=pruning)
  return trainer.train(
      model=tiny.TinyModel(tiny.TinyConfig(dropout_rate=0.0)), model_dir=model_dir,
      train_steps=steps, batch_size=8, mixture_or_task_name=synthetic_data.TASK_NAME,
      task_feature_lengths={"inputs": 4, "targets": 4},
      get_batches_fn=synthetic_data.synthetic_batches, optimizer=opt, partitioner=partitioner,
      checkpoint_period=checkpoint_period, log_period=1, progress_bar=False)


def summary(state, model_dir):
  masks = param_paths.flatten(sparsity.find_pruning_state(state.opt_state).masks)
  params = param_paths.flatten(state.params)
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    losses = [json.loads(line)["loss"] for line in f]
  return {
      "losses": losses,
      "masks": {p: np.asarray(m).astype(int).tolist() for p, m in masks.items()},
      "zeros_match_masks": all(bool(np.array_equal(np.asarray(params[p]) != 0, np.asarray(m)))
                               for p, m in masks.items()),
      "mask_specs": {p: str(tuple(m.sharding.spec)) for p, m in masks.items()},
  }


def main(out_dir):
  devices = jax.devices()
  one = os.path.join(out_dir, "one_device")
  state = train(one, partitioning.Partitioner((1, 1, 1), devices=devices[:1]), STEPS, STEPS)
  results = {"num_devices": len(devices), "one_device": summary(state, one)}
  mesh = os.path.join(out_dir, "mesh")
  train(mesh, partitioning.Partitioner(MESH, devices=devices), 5, 5)
  state = train(mesh, partitioning.Partitioner(MESH, devices=devices), STEPS, 5)
  results["mesh_resumed"] = summary(state, mesh)
  print("RESULT " + json.dumps(results))


if __name__ == "__main__":
  main(sys.argv[1])
