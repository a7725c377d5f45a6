"""Optimizer building blocks: groups by regex, weight-decay masks, freezing, clipping, bases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from palix.training import optimizers, param_paths, schedules


def sgd(learning_rate, weight_decay_mask=None):
  del weight_decay_mask
  return optax.sgd(learning_rate)


def _params():
  return {"vit": {"dense": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)}},
          "text": {"decoder": {"kernel": jnp.full((3, 2), 2.0)},
                   "encoder": {"kernel": jnp.full((3, 2), 2.0)}}}


def _update(optimizer, params, grads):
  tx = optimizer.make()
  updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
  return param_paths.flatten(updates)


def test_per_group_learning_rates_by_regex():
  params = _params()
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(0.1), base=sgd,
                             param_groups=[("text/decoder/.*", 0.5), ("text/.*", 2.0)])
  updates = _update(opt, params, jax.tree.map(jnp.ones_like, params))
  # First match wins: the decoder is 0.5x even though 'text/.*' also matches it.
  np.testing.assert_allclose(updates["text/decoder/kernel"], -0.05, rtol=1e-6)
  np.testing.assert_allclose(updates["text/encoder/kernel"], -0.2, rtol=1e-6)
  np.testing.assert_allclose(updates["vit/dense/kernel"], -0.1, rtol=1e-6)
  assert opt.labels(params)["text"]["decoder"]["kernel"] == "group0"


def test_weight_decay_mask_excludes_matching_paths():
  params = _params()
  lr, wd = 0.1, 0.5
  opt = optimizers.Optimizer(
      learning_rate_fn=schedules.constant(lr), no_weight_decay=[".*/bias"],
      base=lambda learning_rate, mask: optimizers.adamw(learning_rate, mask, weight_decay=wd))
  # Zero gradients: Adam's step is 0, so the update is exactly the decoupled decay -lr*wd*p.
  updates = _update(opt, params, jax.tree.map(jnp.zeros_like, params))
  np.testing.assert_allclose(updates["vit/dense/kernel"], -lr * wd * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates["text/decoder/kernel"], -lr * wd * 2.0, rtol=1e-6)
  np.testing.assert_array_equal(updates["vit/dense/bias"], 0.0)


def test_frozen_parameters_get_no_update_and_no_optimizer_state():
  params = _params()
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(0.1), base=optimizers.adamw,
                             frozen=["vit/.*"])
  tx = opt.make()
  state = tx.init(params)
  state_paths = [p for p, leaf in param_paths.flatten(state).items() if np.ndim(leaf) > 0]
  assert state_paths, "AdamW keeps moments for the trainable parameters"
  assert not [p for p in state_paths if "/vit/" in f"/{p}/"], state_paths
  # mu and nu for the two text kernels only.
  assert sum(1 for p in state_paths if p.endswith("/kernel")) == 4
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  flat = param_paths.flatten(updates)
  np.testing.assert_array_equal(flat["vit/dense/kernel"], 0.0)
  assert np.all(np.asarray(flat["text/encoder/kernel"]) < 0)
  assert param_paths.flatten(opt.frozen_mask(params)) == {
      "vit/dense/bias": True, "vit/dense/kernel": True, "text/decoder/kernel": False,
      "text/encoder/kernel": False}


def test_model_frozen_prefixes_are_added():
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(0.1)).with_frozen_prefixes(
      ["text/encoder"])
  mask = param_paths.flatten(opt.frozen_mask(_params()))
  assert mask["text/encoder/kernel"] and not mask["text/decoder/kernel"]


def test_gradient_clipping_bounds_the_global_norm():
  params = _params()
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(1.0), base=sgd,
                             clip_grad_norm=1.0)
  updates = _update(opt, params, jax.tree.map(lambda p: jnp.full_like(p, 10.0), params))
  assert float(optax.global_norm(list(updates.values()))) == pytest.approx(1.0, rel=1e-5)


def test_adafactor_builds_factored_state_and_steps():
  params = {"big": jnp.ones((256, 130)), "small": jnp.ones((5,))}
  opt = optimizers.Optimizer(learning_rate_fn=schedules.rsqrt(0.01, warmup_steps=10),
                             base=optimizers.adafactor)
  tx = opt.make()
  state = jax.eval_shape(tx.init, params)
  shapes = sorted({np.shape(x) for x in jax.tree.leaves(state)})
  assert (256,) in shapes and (130,) in shapes  # factored row/column statistics
  assert (256, 130) not in shapes  # no full second moment for the factored matrix
  updates, _ = jax.jit(lambda p: tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p))(params)
  assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("field, value, message", [
    ("frozen", ["vitt/.*"], "Optimizer.frozen: pattern 'vitt/.\\*' matches no parameter"),
    ("param_groups", [("nope", 2.0)], "Optimizer.param_groups: pattern 'nope'"),
    ("frozen", ["("], "invalid regular expression"),
])
def test_bad_patterns_are_reported(field, value, message):
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(0.1), **{field: value})
  with pytest.raises(ValueError, match=message):
    opt.make().init(_params())


def test_param_group_entries_are_checked():
  with pytest.raises(ValueError, match="lr_multiplier"):
    optimizers.Optimizer(learning_rate_fn=schedules.constant(0.1), param_groups=[("a", "b")])
