"""Pruning in the optimizer: exact zeros under AdamW and Adafactor, no moment leakage, the paper's
tensor selection, frozen parameters, and clear errors for bad settings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from palix import sparsity
from palix.training import optimizers, param_paths, schedules

STEPS = 30


def _params():
  k = jax.random.split(jax.random.key(0), 4)
  return {"block": {"mlp": {"wi": {"kernel": jax.random.normal(k[0], (16, 32)),
                                   "bias": jnp.zeros((32,))},
                            "wo": {"kernel": jax.random.normal(k[1], (32, 16))}},
                    "norm": {"scale": jnp.ones((16,))}},
          "attention": {"query": {"bias": jnp.ones((2, 8))}},  # DenseGeneral: 2-D bias
          "relpos_bias": {"rel_embedding": jax.random.normal(k[2], (8, 4))},
          "token_embedder": {"embedding": jax.random.normal(k[3], (24, 16))},
          "frozen": {"kernel": jax.random.normal(k[0], (8, 8))}}  # Optimizer.frozen below


def _run(base, pruning, steps=STEPS, frozen=("frozen/.*",)):
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(0.05), base=base,
                             sparsity=pruning, frozen=frozen)
  tx = opt.make()

  @jax.jit
  def step(params, state, key):
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape) + 0.5, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = _params(), tx.init(_params())
  history = []
  for i in range(steps):
    params, state = step(params, state, jax.random.key(i + 1))
    history.append((params, state))
  return history


def _adafactor(learning_rate, weight_decay_mask=None):
  # Factor every matrix (the tiny test shapes are below t5x's 128 threshold).
  return optimizers.adafactor(learning_rate, weight_decay_mask, min_dim_size_to_factor=4)


PRUNING = sparsity.Pruning(sparsity=0.75, schedule=sparsity.GradualSchedule(
    total_steps=20, start_fraction=0.25, end_fraction=0.75, update_every=2))


@pytest.fixture(scope="module", params=["adamw", "adafactor"])
def history(request):
  base = optimizers.adamw if request.param == "adamw" else _adafactor
  return request.param, _run(base, PRUNING)


def test_pruned_weights_stay_exactly_zero_after_many_steps(history):
  _, runs = history
  final_params, final_state = runs[-1]
  masks = param_paths.flatten(final_state.masks)
  for path, mask in masks.items():
    w = np.asarray(param_paths.flatten(final_params)[path])
    assert np.all(w[~np.asarray(mask)] == 0.0), path  # exact, not approximately
    assert np.all(w[np.asarray(mask)] != 0.0), path
  # The masks were final from step 15 (t = 15 = end); the 15 later steps never regrew a weight.
  for params, state in runs[15:]:
    for path, mask in param_paths.flatten(state.masks).items():
      np.testing.assert_array_equal(np.asarray(param_paths.flatten(params)[path]) != 0, mask)


def test_masks_only_shrink(history):
  _, runs = history
  previous = None
  for _, state in runs:
    masks = {p: np.asarray(m) for p, m in param_paths.flatten(state.masks).items()}
    if previous is not None:
      for p in masks:
        assert not np.any(masks[p] & ~previous[p]), p
    previous = masks


def test_target_sparsities_and_paper_selection(history):
  _, runs = history
  params, state = runs[-1]
  counts = {p: float((np.asarray(x) == 0).mean()) for p, x in param_paths.flatten(params).items()}
  assert counts["block/mlp/wi/kernel"] == 0.75 and counts["block/mlp/wo/kernel"] == 0.75
  embed = 1 - math.sqrt(1 - 0.75)  # 0.5: the paper's embedding rule
  assert counts["token_embedder/embedding"] == pytest.approx(embed, abs=1 / 384)
  for dense in ("block/mlp/wi/bias", "block/norm/scale", "relpos_bias/rel_embedding",
                "attention/query/bias"):
    assert counts[dense] == 0.0, dense  # ndim < 2 and relative positions stay dense
  assert set(param_paths.flatten(state.masks)) == {
      "block/mlp/wi/kernel", "block/mlp/wo/kernel", "token_embedder/embedding"}  # not frozen/


def test_adam_moments_of_pruned_entries_are_zero(history):
  name, runs = history
  if name != "adamw":
    pytest.skip("Adam's moments")
  _, state = runs[17]
  adam = state.inner_state[0].inner_states["default"].inner_state[0]
  for path, mask in param_paths.flatten(state.masks).items():
    for moment in (adam.mu, adam.nu):
      m = np.asarray(param_paths.flatten(moment)[path])
      assert np.all(m[~np.asarray(mask)] == 0.0), path
      assert np.any(m[np.asarray(mask)] != 0.0), path


def test_frozen_parameters_are_never_pruned(history):
  _, runs = history
  params, _ = runs[-1]
  np.testing.assert_array_equal(params["frozen"]["kernel"], _params()["frozen"]["kernel"])


def test_schedule_values_are_reached_in_training(history):
  """start = 5, end = 15, updates every 2: after the update at t (step t + 1) a pruned tensor
  has round(target * (1 - (1 - p)^3) * size) zeros, p = (t - 5) / 10, until the next update."""
  _, runs = history
  size = 16 * 32
  for t in (5, 7, 9, 11, 13, 15, 16, 29):
    last_update = min(t - (t - 5) % 2, 15)
    p = (last_update - 5) / 10
    params, _ = runs[t]
    zeros = int((np.asarray(params["block"]["mlp"]["wi"]["kernel"]) == 0).sum())
    assert zeros == round(0.75 * (1 - (1 - p) ** 3) * size), t
  # the middle of the window (t = 10) holds the mask of t = 9; the cubic's midpoint value itself
  # (0.875 of the target) is checked in test_schedule.py.


def test_iterative_nm_ends_two_four_along_the_axis():
  params, _ = _run(optimizers.adamw, sparsity.Pruning(
      structure=sparsity.IterativeNM(2, 4, axis=0), embeddings=(),
      exclude=["relpos_bias/.*", "token_embedder/.*", "attention/.*"],
      schedule=sparsity.GradualSchedule(total_steps=12, update_every=1)), steps=12)[-1]
  for path in ("block/mlp/wi/kernel", "block/mlp/wo/kernel"):
    w = np.asarray(param_paths.flatten(params)[path])
    groups = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1])
    assert np.all(groups.sum(1) == 2), path


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.0), r"Pruning.sparsity = 1.0: must be a number in \[0, 1\)"),
    (dict(sparsity=-0.1), r"must be a number in \[0, 1\)"),
    (dict(), "Pruning.sparsity is required"),
    (dict(sparsity=0.75, structure=sparsity.NM(2, 4)), "contradicts NM"),
])
def test_bad_pruning_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sparsity.Pruning(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=0.5, include=["block/mpl/.*"]), "Pruning.include: pattern 'block/mpl/.\\*' "
                                                   "matches no parameter"),
    (dict(sparsity=0.5, exclude=["nothing"]), "Pruning.exclude: pattern 'nothing'"),
    (dict(structure=sparsity.NM(2, 4, axis=2)), r"'block/mlp/wi/kernel' has shape \(16, 32\), "
                                                r"which has no axis 2"),
    (dict(structure=sparsity.NM(2, 3, axis=0)), r"axis 0 \(size 16\) is not divisible by m=3"),
])
def test_bad_selection_is_reported_at_init(kwargs, message):
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(0.1),
                             sparsity=sparsity.Pruning(**kwargs))
  with pytest.raises(ValueError, match=message):
    opt.make().init(_params())


@pytest.mark.parametrize("model_gin", ["models/t5/t5_1_1_tiny.gin", "models/palix/palix_tiny.gin",
                                       "models/cappa/cappa_tiny.gin"])
def test_paper_defaults_on_palix_models(model_gin):
  """The selection on real parameter trees (abstract shapes, nothing allocated)."""
  import gin  # pylint: disable=g-import-not-at-top
  from palix import config as palix_config  # pylint: disable=g-import-not-at-top
  from palix import model_stats  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  try:
    palix_config.parse_gin([model_gin], [], [], finalize=False)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    shapes = model_stats.param_shapes(model.module, model.example_inputs(1))
  finally:
    gin.clear_config()
  flat = param_paths.flatten(shapes)
  targets = sparsity.Pruning(sparsity=0.75).targets(shapes)
  for path, leaf in flat.items():
    expected = (len(leaf.shape) >= 2 and "relpos" not in path and not path.endswith("/bias"))
    assert (path in targets) == expected, path
    if path in targets:
      embedding = "token_embedder/" in path or "logits_dense/" in path
      assert targets[path][0] == pytest.approx(0.5 if embedding else 0.75), path
  if "t5" in model_gin:
    assert targets["token_embedder/embedding"][0] == pytest.approx(0.5)


@pytest.mark.parametrize("base", [optimizers.adamw, _adafactor], ids=["adamw", "adafactor"])
def test_gradients_of_pruned_entries_do_not_leak(base):
  """After pruning, what the gradient says about pruned entries changes nothing: not the clipping
  norm, not Adam's moments, not Adafactor's factored statistics, not any update."""
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(0.05), base=base,
                             clip_grad_norm=1.0, sparsity=sparsity.Pruning(sparsity=0.5))
  tx = opt.make()
  update = jax.jit(tx.update)
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.1), params)
  updates, state = update(grads, tx.init(params), params)  # t = 0: one-shot masks
  params = optax.apply_updates(params, updates)
  masks = state.masks
  noisy = jax.tree.map(
      lambda g, m: g if isinstance(m, optax.MaskedNode) else jnp.where(m, g, 1e6), grads, masks)
  clean_updates, clean_state = update(grads, state, params)
  noisy_updates, noisy_state = update(noisy, state, params)
  for a, b in zip(jax.tree.leaves((clean_updates, clean_state)),
                  jax.tree.leaves((noisy_updates, noisy_state))):
    np.testing.assert_array_equal(a, b)
