"""What ``palix.training.checkpoints`` says about a folder it cannot resume from: another model
(every differing parameter listed), another optimizer, an incomplete save."""

import logging
import os

import jax
import jax.numpy as jnp
import optax
import pytest

from palix.training import checkpoints
from palix.training.train_state import TrainState

SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _state(width=3, extra=False, tx=optax.adamw(1e-3)):
  params = {"encoder": {"proj": {"kernel": jnp.ones((4, width)), "bias": jnp.zeros((width,))}},
            "decoder": {"wi": {"kernel": jnp.ones((width, 2))}}}
  if extra:
    params["head"] = {"kernel": jnp.ones((2, 5))}
  return TrainState(step=jnp.asarray(2, jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(0)))


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SHARDING), state)


@pytest.fixture
def saved_run(tmp_path):
  directory = tmp_path / "run" / "checkpoints"
  ckpts = checkpoints.Checkpoints(str(directory), keep=2, async_save=False)
  ckpts.save(2, _state(), {"batch_size": 8})
  ckpts.close()
  return directory


def test_resuming_another_model_lists_every_differing_parameter(saved_run):
  ckpts = checkpoints.Checkpoints(str(saved_run))
  with pytest.raises(ValueError) as info:
    ckpts.restore(2, _abstract(_state(width=5, extra=True)))
  ckpts.close()
  lines = str(info.value).splitlines()
  assert lines[0].startswith(f"{saved_run} holds a different model (step 2): 4 parameter(s) "
                             "differ from this run's model. Train into a new MODEL_DIR, or start "
                             "from those weights with runs/finetune.gin")
  # One line per parameter: path, this model's shape, the stored shape (sorted as flattened).
  assert sorted(lines[1:]) == sorted([
      "  'decoder/wi/kernel': shape (5, 2) but the checkpoint's 'decoder/wi/kernel' has shape "
      "(3, 2)",
      "  'encoder/proj/bias': shape (5,) but the checkpoint's 'encoder/proj/bias' has shape (3,)",
      "  'encoder/proj/kernel': shape (4, 5) but the checkpoint's 'encoder/proj/kernel' has shape "
      "(4, 3)",
      "  'head/kernel': in this model (shape (2, 5)) but not in the checkpoint"])


def test_a_parameter_only_in_the_checkpoint_is_listed(saved_run):
  ckpts = checkpoints.Checkpoints(str(saved_run))
  small = _state()
  del small.params["decoder"]
  small = small.replace(opt_state=optax.adamw(1e-3).init(small.params))
  with pytest.raises(ValueError, match=r"(?s)1 parameter\(s\) differ.*\n  'decoder/wi/kernel': in "
                     r"the checkpoint \(shape \(3, 2\)\) but not in this model$"):
    ckpts.restore(2, _abstract(small))
  ckpts.close()


def test_another_optimizer_state_is_named_as_such(saved_run):
  ckpts = checkpoints.Checkpoints(str(saved_run))
  with pytest.raises(ValueError, match="the parameters match this model but the rest of the "
                     r"training state does not \(another optimizer"):
    ckpts.restore(2, _abstract(_state(tx=optax.sgd(0.1, momentum=0.9))))
  ckpts.close()


def _stop_while_saving(directory, step):
  """What a run killed while writing ``step`` leaves: Orbax's temporary folder, never renamed."""
  os.rename(directory / str(step), directory / f"{step}.orbax-checkpoint-tmp")


def test_an_incomplete_first_save_is_reported_and_ignored(saved_run, caplog):
  _stop_while_saving(saved_run, 2)
  assert checkpoints.incomplete_saves(saved_run) == ["2.orbax-checkpoint-tmp"]
  with pytest.raises(FileNotFoundError, match=r"holds only an incomplete save "
                     r"\(2.orbax-checkpoint-tmp\), left by a training run stopped while writing "
                     r"it, and no complete checkpoint"):
    checkpoints.resolve_pytree_dir(str(saved_run.parent))  # what palix eval and infer read
  with caplog.at_level(logging.WARNING, logger="palix.training.checkpoints"):
    ckpts = checkpoints.Checkpoints(str(saved_run))  # what palix train does on restart
  assert ckpts.latest_step() is None
  ckpts.close()
  assert caplog.messages == [
      f"{saved_run}: found an incomplete save (2.orbax-checkpoint-tmp), left by a run stopped "
      "while writing it; it is ignored and deleted, there is no complete checkpoint (starting "
      "from step 0)"]


def test_an_incomplete_later_save_names_the_step_resumed_from(saved_run, caplog):
  ckpts = checkpoints.Checkpoints(str(saved_run), async_save=False)
  ckpts.save(4, _state(), {"batch_size": 8})
  ckpts.close()
  _stop_while_saving(saved_run, 4)
  assert checkpoints.resolve_pytree_dir(str(saved_run)) == saved_run / "2" / "state"
  with caplog.at_level(logging.WARNING, logger="palix.training.checkpoints"):
    ckpts = checkpoints.Checkpoints(str(saved_run))
  assert ckpts.latest_step() == 2
  ckpts.close()
  assert caplog.messages[0].endswith("the newest complete checkpoint is step 2")
