"""LoRA on the tiny model, on one device and on a (1, 2, 2) mesh; prints JSON (test_lora_training.py).

``python lora_sharded_runs.py OUT_DIR`` expects 4 (fake) CPU devices. Both runs train the same
adapters on the same batches from the same frozen base, so their losses must agree; the adapters
must be laid out by their logical axes (``A``: the kernel's input axis, ``B``: its output axis).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import tiny_trainable_model as tiny  # noqa: E402
from palix import lora  # noqa: E402
from palix import partitioning  # noqa: E402
from palix.training import lora as lora_training  # noqa: E402
from palix.training import optimizers, schedules, synthetic_data, trainer  # noqa: E402

STEPS = 4
MESH = (1, 2, 2)


def train(model_dir, partitioner):
  model = lora_training.LoraModel(tiny.TinyModel(tiny.TinyConfig(dropout_rate=0.0)),
                                  lora.LoraConfig(targets=("decoder/(wi|wo)/kernel",), rank=2))
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(1e-2), base=optimizers.adamw)
  return trainer.train(
      model=model, model_dir=model_dir, train_steps=STEPS, batch_size=8,
      mixture_or_task_name=synthetic_data.TASK_NAME,
      task_feature_lengths={"inputs": 4, "targets": 4},
      get_batches_fn=synthetic_data.synthetic_batches, optimizer=opt, partitioner=partitioner,
      checkpoint_period=STEPS, log_period=1, progress_bar=False, async_checkpointing=False)


def main(out_dir):
  devices = jax.devices()
  results = {"num_devices": len(devices)}
  for name, shape, devs in [("one_device", (1, 1, 1), devices[:1]), ("mesh", MESH, devices)]:
    model_dir = os.path.join(out_dir, name)
    state = train(model_dir, partitioning.Partitioner(mesh_shape=shape, devices=devs))
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
      losses = [json.loads(line)["loss"] for line in f]
    adapters = jax.tree_util.tree_flatten_with_path(state.params["lora"])[0]
    results[name] = {
        "losses": losses,
        "specs": {jax.tree_util.keystr(p): list(x.sharding.spec) for p, x in adapters},
        "adapters": {jax.tree_util.keystr(p): jax.device_get(x).tolist() for p, x in adapters},
    }
  print("RESULT " + json.dumps(results))


if __name__ == "__main__":
  main(sys.argv[1])
