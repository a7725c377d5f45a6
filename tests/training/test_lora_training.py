"""LoRA with the trainer: runs/finetune_lora.gin through ``palix train`` (base frozen bit for bit,
no optimizer state for it), ``palix lora save-adapters`` / ``merge``, and LoraModel training
PaLI-X and CapPa (CapPa: slow) with under 5% of the parameters trained."""

import functools

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

import subprocesses
import tiny_trainable_model
from palix import config as palix_config
from palix import lora
from palix import partitioning
from palix.cli import main as cli_main
from palix.training import lora as lora_training
from palix.training import optimizers
from palix.training import schedules
from palix.training import synthetic_data
from palix.training import train_step
from palix.training.train_state import StateFactory

MODEL_GIN = str(subprocesses.TESTS_TRAINING / "tiny_model.gin")
EXPERIMENT_GIN = str(subprocesses.TESTS_TRAINING / "synthetic_experiment.gin")
TARGETS = "decoder/(wi|wo)/kernel"


def _train(model_dir, run_gin, steps, *extra):
  gin.clear_config()
  try:
    assert cli_main.main([
        "train", f"--gin_file={MODEL_GIN}", f"--gin_file={run_gin}",
        f"--gin_file={EXPERIMENT_GIN}", f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
        "--gin.trainer.train.progress_bar=False", "--gin.trainer.train.async_checkpointing=False",
        *extra]) == 0
  finally:
    gin.clear_config()


def _state_tree(model_dir, step):
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(str(model_dir / "checkpoints" / str(step) / "state"))


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A 3-step base run, then 6 LoRA steps from it through runs/finetune_lora.gin."""
  root = tmp_path_factory.mktemp("lora")
  _train(root / "base", "runs/pretrain.gin", 3)
  _train(root / "lora", "runs/finetune_lora.gin", 6,
         f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'base'}'", f"--gin.LoraConfig.targets=['{TARGETS}']",
         "--gin.LoraConfig.rank=2", "--gin.LoraConfig.alpha=4.0")
  return root, _state_tree(root / "base", 3), _state_tree(root / "lora", 6)


def test_base_is_frozen_without_optimizer_state(runs):
  _, base, tuned = runs
  base_params, tuned_params = _flat(base["params"]), _flat(tuned["params"])
  assert {p.split("/")[0] for p in tuned_params} == {"base", "lora"}
  for path, value in base_params.items():  # loaded from the base run, never updated
    np.testing.assert_array_equal(tuned_params["base/" + path], value, err_msg=path)
  adapters = {p: v for p, v in tuned_params.items() if p.startswith("lora/")}
  assert sorted(adapters) == [f"lora/decoder/{n}/kernel/{ab}" for n in ("wi", "wo")
                              for ab in ("lora_a", "lora_b")]
  assert all(np.abs(v).max() > 0 for p, v in adapters.items() if p.endswith("lora_b"))  # trained
  # AdamW keeps two moments of each adapter and nothing of the base.
  moments = sum(np.size(v) for v in jax.tree.leaves(tuned["opt_state"]) if np.size(v) > 1)
  assert moments == 2 * sum(np.size(v) for v in adapters.values())


def test_save_adapters_and_merge_commands(runs, capsys):
  root, _, tuned = runs
  assert cli_main.main(["lora", "save-adapters", f"--checkpoint={root / 'lora'}",
                        f"--output={root / 'adapters'}"]) == 0
  adapters, config = lora_training.load_adapters(root / "adapters")
  assert (config.rank, config.alpha, tuple(config.targets)) == (2, 4.0, (TARGETS,))
  tuned_params = _flat(tuned["params"])
  for path, value in _flat(adapters).items():
    np.testing.assert_array_equal(value, tuned_params["lora/" + path])
  assert capsys.readouterr().out.strip().splitlines()[-1] == (
      f"total_params: {sum(np.size(v) for v in _flat(adapters).values())}")
  assert cli_main.main(["lora", "merge", f"--base={root / 'base'}",
                        f"--adapters={root / 'adapters'}", f"--output={root / 'merged'}"]) == 0
  with ocp.StandardCheckpointer() as checkpointer:
    merged = checkpointer.restore(root / "merged")["params"]
  # The base model on the merged checkpoint computes what the LoRA model computes.
  model = tiny_trainable_model.TinyModel()
  lora_model = lora_training.LoraModel(model, config)
  batch = next(synthetic_data.synthetic_batches(split="test", batch_size=8, image_size=16,
                                                feature_lengths={"inputs": 4, "targets": 4}))
  ours = jax.jit(lambda p: model.loss_fn(p, batch, None)[0])(merged)
  theirs = jax.jit(lambda p: lora_model.loss_fn(p, batch, None)[0])(tuned["params"])
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  wi = _flat(tuned["params"])
  np.testing.assert_allclose(
      _flat(merged)["decoder/wi/kernel"],
      wi["base/decoder/wi/kernel"] + 2.0 * wi["lora/decoder/wi/kernel/lora_a"]
      @ wi["lora/decoder/wi/kernel/lora_b"], rtol=1e-5, atol=1e-6)


def test_command_errors(runs, capsys):
  root, _, _ = runs
  code = cli_main.main(["lora", "merge", f"--base={root / 'base'}", f"--adapters={root / 'base'}",
                        f"--output={root / 'never'}"])
  assert code != 0 and "lora.json not found" in capsys.readouterr().err
  code = cli_main.main(["lora", "save-adapters", f"--checkpoint={root / 'base'}",
                        f"--output={root / 'never'}"])
  assert code != 0 and "no parameters under 'lora/'" in capsys.readouterr().err
  assert not (root / "never").exists()


# --- PaLI-X and CapPa ---------------------------------------------------------------------------

MODELS = {
    "palix": ("models/palix/palix_tiny.gin", ["T5Config.vocab_size = 16"], 32,
              "text/(encoder|decoder)/layers_.*/(self_)?attention/(query|value)/kernel"),
    # CapPa's output layer starts at zero (big_vision's head_zeroinit): until it moves, nothing
    # before it gets a gradient, so it is adapted too.
    "cappa": ("models/cappa/cappa_tiny.gin", ["CapPaConfig.vocab_size = 16"], 28,
              ".*/(query|value|logits)/kernel"),
}


@functools.lru_cache(maxsize=None)
def _setup(kind):
  """A LoraModel over the tiny model, its sharded train step (AdamW 1e-2) and a batch."""
  gin_file, bindings, image_size, targets = MODELS[kind]
  gin.clear_config()
  try:
    palix_config.parse_gin([gin_file], bindings, finalize=False)
    base = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  model = lora_training.LoraModel(base, lora.LoraConfig(targets=(targets,), rank=2, alpha=4.0))
  batch = next(synthetic_data.synthetic_batches(split="train", batch_size=4, image_size=image_size,
                                                feature_lengths={"inputs": 4, "targets": 4}))
  optimizer = optimizers.Optimizer(learning_rate_fn=schedules.constant(1e-2),
                                   base=optimizers.adamw)
  optimizer = optimizer.with_frozen_prefixes(model.frozen_param_prefixes())
  factory = StateFactory(model, optimizer.make(), partitioning.Partitioner(),
                         {k: v.shape for k, v in batch.items()},
                         {k: v.dtype for k, v in batch.items()})
  step = jax.jit(train_step.make_train_step(model, factory.tx, optimizer.learning_rate_fn,
                                            optimizer.frozen_mask(factory.abstract_params)))
  return model, factory, step, batch


@pytest.mark.parametrize("kind", ["palix", pytest.param("cappa", marks=pytest.mark.slow)])
def test_lora_trains_palix_and_cappa(kind):
  model, factory, step, batch = _setup(kind)
  state = factory.initialize()
  start = jax.device_get(state.params)
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0], losses
  end = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, end["base"], start["base"])
  total = sum(np.size(x) for x in jax.tree.leaves(end))
  trained = sum(np.size(x) for x in jax.tree.leaves(end["lora"]))
  assert trained / total < 0.05, (trained, total)


@pytest.mark.slow
def test_adapters_are_sharded_by_their_logical_axes(tmp_path):
  """4 fake devices, mesh (data 1, fsdp 2, model 2): A [embed, r] is split over fsdp on the
  kernel's input axis, B [r, mlp] over model on its output axis (the rank axis never), and the
  sharded run trains the same adapters as one device."""
  import json  # pylint: disable=g-import-not-at-top
  log = tmp_path / "run.log"
  proc = subprocesses.start(["tests/training/lora_sharded_runs.py", str(tmp_path)], log,
                            subprocesses.env(4))
  assert subprocesses.wait_all([proc], 900)[0] == 0, subprocesses.tail(log)
  line = [l for l in log.read_text().splitlines() if l.startswith("RESULT ")][-1]
  result = json.loads(line[len("RESULT "):])
  one, mesh = result["one_device"], result["mesh"]
  assert result["num_devices"] == 4
  assert mesh["specs"]["['decoder']['wi']['kernel']['lora_a']"] == ["fsdp", None]
  assert mesh["specs"]["['decoder']['wi']['kernel']['lora_b']"] == [None, "model"]
  assert mesh["specs"]["['decoder']['wo']['kernel']['lora_a']"] == ["model", None]
  assert mesh["specs"]["['decoder']['wo']['kernel']['lora_b']"] == [None, "fsdp"]
  np.testing.assert_allclose(mesh["losses"], one["losses"], rtol=1e-5)
  for key, value in one["adapters"].items():
    np.testing.assert_allclose(mesh["adapters"][key], value, rtol=1e-4, atol=1e-6, err_msg=key)
