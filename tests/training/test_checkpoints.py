"""Checkpoint round trips and (partial) parameter restores with clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from palix.training import checkpoints, param_paths
from palix.training.train_state import TrainState

SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _params(scale=1.0):
  return {"encoder": {"proj": {"kernel": scale * jnp.arange(12.0).reshape(4, 3),
                               "bias": scale * jnp.arange(3.0)}},
          "decoder": {"wi": {"kernel": scale * jnp.ones((3, 2))}}}


def _abstract(params, dtype=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=SHARDING),
                      params)


def _save_params_only(path, params, wrap=True):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(path), {"params": params} if wrap else params)
  checkpointer.wait_until_finished()
  return str(path)


def test_train_state_round_trip_and_path_resolution(tmp_path):
  params = _params()
  tx = optax.adamw(1e-3)
  opt_state = tx.update(_params(0.5), tx.init(params), params)[1]
  state = TrainState(step=jnp.asarray(3, jnp.int32), params=params, opt_state=opt_state,
                     rng=jax.random.key_data(jax.random.key(7)))
  ckpts = checkpoints.Checkpoints(str(tmp_path / "run" / "checkpoints"), keep=2)
  for step in (1, 2, 3):
    ckpts.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), {"batch_size": 8})
  ckpts.wait()
  assert ckpts.latest_step() == 3
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2", "3"]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SHARDING),
                          state)
  restored, metadata = ckpts.restore(3, abstract)
  ckpts.close()
  assert metadata == {"step": 3, "batch_size": 8}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  latest = tmp_path / "run" / "checkpoints" / "3" / "state"
  for path in ("run", "run/checkpoints", "run/checkpoints/3", "run/checkpoints/3/state"):
    assert checkpoints.resolve_pytree_dir(str(tmp_path / path)) == latest
  loaded = checkpoints.load_params(str(tmp_path / "run"), _abstract(params))
  np.testing.assert_array_equal(loaded["encoder/proj/kernel"], params["encoder"]["proj"]["kernel"])


def test_relative_model_dirs_save_and_load(tmp_path, monkeypatch):
  """``MODEL_DIR='runs/demo'`` (relative, as `make demo` uses) works although Orbax wants
  absolute paths."""
  monkeypatch.chdir(tmp_path)
  params = _params()
  state = TrainState(step=jnp.asarray(1, jnp.int32), params=params, opt_state=(),
                     rng=jax.random.key_data(jax.random.key(0)))
  ckpts = checkpoints.Checkpoints("runs/demo/checkpoints", keep=1)
  ckpts.save(1, state, {})
  ckpts.close()
  assert (tmp_path / "runs/demo/checkpoints/1/state").is_dir()
  loaded = checkpoints.load_params("runs/demo", _abstract(params))
  np.testing.assert_array_equal(loaded["encoder/proj/kernel"], params["encoder"]["proj"]["kernel"])


def test_partial_restore_with_rename_from_params_only_checkpoint(tmp_path):
  source = {"img": _params(3.0)["encoder"], "other": {"w": jnp.zeros((2,))}}
  path = _save_params_only(tmp_path / "converted", source)
  fresh = _params()
  initial = checkpoints.InitialCheckpoint(path=path, include=["encoder/.*"],
                                          rename=[("encoder/(.*)", r"img/\1")])
  restored = param_paths.flatten(initial.apply(fresh, _abstract(fresh)))
  np.testing.assert_array_equal(restored["encoder/proj/kernel"],
                                source["img"]["proj"]["kernel"])
  np.testing.assert_array_equal(restored["encoder/proj/bias"], source["img"]["proj"]["bias"])
  np.testing.assert_array_equal(restored["decoder/wi/kernel"], fresh["decoder"]["wi"]["kernel"])


def test_restore_casts_to_the_target_dtype(tmp_path):
  path = _save_params_only(tmp_path / "p", _params())
  loaded = checkpoints.load_params(path, _abstract(_params(), jnp.bfloat16))
  assert loaded["decoder/wi/kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(loaded["encoder/proj/kernel"], np.float32),
                                np.arange(12.0).reshape(4, 3))


def test_mismatches_are_all_reported(tmp_path):
  stored = _params()
  stored["encoder"]["proj"]["kernel"] = jnp.ones((4, 5))
  del stored["decoder"]
  stored["decodr"] = {"wi": {"kernel": jnp.ones((3, 2))}}
  path = _save_params_only(tmp_path / "p", stored)
  with pytest.raises(ValueError) as info:
    checkpoints.load_params(path, _abstract(_params()))
  message = str(info.value)
  assert "cannot restore 2 of 3 selected parameters" in message
  assert "'encoder/proj/kernel': shape (4, 3) but the checkpoint's 'encoder/proj/kernel' has " \
         "shape (4, 5)" in message
  assert "'decoder/wi/kernel': no parameter 'decoder/wi/kernel' in the checkpoint (closest " \
         "stored name: 'decodr/wi/kernel')" in message


def test_bad_paths_and_patterns(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoints.resolve_pytree_dir(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="is not a palix checkpoint"):
    checkpoints.resolve_pytree_dir(str(tmp_path / "empty"))
  no_params = _save_params_only(tmp_path / "np", {"weights": {"w": jnp.ones(2)}}, wrap=False)
  with pytest.raises(ValueError, match="has no 'params' entry"):
    checkpoints.load_params(no_params, _abstract(_params()))
  good = _save_params_only(tmp_path / "good", _params())
  with pytest.raises(ValueError, match="pattern 'vit/.\\*' matches no parameter"):
    checkpoints.load_params(good, _abstract(_params()), include=["vit/.*"])
