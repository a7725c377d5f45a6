"""CapPa: what each decoder position may see in both modes, mode sampling, cached decoding, scoring.

Parameters are random everywhere (the logits layer is zero-initialised in the real init, which
would make every logit 0 and every comparison vacuous).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from palix.models.base import shift_right
from palix.models.cappa import CapPa, CapPaConfig, CapPaModel
from palix.models.vit import ViTConfig

VOCAB, L, IMG, B = 24, 7, 16, 3


def _config():
  vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=IMG)
  return CapPaConfig(vit=vit, vocab_size=VOCAB, max_len=8, decoder_depth=2)


def _random_params(model, seed=0):
  shapes = jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0))
  flat = traverse_util.flatten_dict(nn.meta.unbox(shapes["params"]))
  rng = np.random.RandomState(seed)
  out = {}
  for path, leaf in flat.items():
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    out[path] = 1 + 0.1 * noise if path[-1] == "scale" else 0.3 * noise
  return traverse_util.unflatten_dict(out)


@pytest.fixture(scope="module")
def setup():
  model = CapPaModel(_config(), image_size=IMG, max_target_len=L, masked_pred_prob=0.5)
  params = _random_params(model)
  logits = jax.jit(lambda p, images, tokens, parallel: model.module.apply(
      {"params": p}, images, tokens, parallel))
  return model, params, logits


@pytest.fixture(scope="module")
def loss_for_modes(setup):
  """Jitted ``model.loss_for_modes(params, batch, flags)`` (flags always an array: one compile)."""
  return jax.jit(setup[0].loss_for_modes)


def _targets(rng, lengths):
  """Targets ``[B, L]``: random ids in 2..VOCAB-1, EOS at ``length - 1``, then 0 padding."""
  t = np.zeros((len(lengths), L), np.int32)
  for i, n in enumerate(lengths):
    t[i, :n - 1] = rng.integers(2, VOCAB, n - 1)
    t[i, n - 1] = 1
  return t


def _batch(seed=0, lengths=(4, 7, 2)):
  rng = np.random.default_rng(seed)
  targets = _targets(rng, lengths)
  return dict(images=rng.uniform(-1, 1, (len(lengths), 1, IMG, IMG, 3)).astype(np.float32),
              image_mask=np.ones((len(lengths), 1), np.int32),
              decoder_input_tokens=np.asarray(shift_right(targets)),
              decoder_target_tokens=targets,
              decoder_loss_weights=(targets > 0).astype(np.float32))


ALL_AR, ALL_PARALLEL = np.zeros(B, bool), np.ones(B, bool)


def test_parallel_logits_do_not_depend_on_targets_at_all(setup):
  _, params, logits = setup
  a, b = _batch(0, (4, 7, 2)), _batch(1, (7, 3, 5))
  images = a["images"][:, 0]
  out_a = logits(params, images, a["decoder_input_tokens"], ALL_PARALLEL)
  out_b = logits(params, images, b["decoder_input_tokens"], ALL_PARALLEL)
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
  # The same two inputs in AR mode do give different logits, so the comparison can fail.
  ar_a = logits(params, images, a["decoder_input_tokens"], ALL_AR)
  ar_b = logits(params, images, b["decoder_input_tokens"], ALL_AR)
  assert np.abs(np.asarray(ar_a) - np.asarray(ar_b)).max() > 1e-3


def test_parallel_mode_is_non_causal_and_ar_mode_causal(setup):
  """Perturbing the last position's embedding reaches position 0 only in parallel mode."""
  _, params, logits = setup
  batch = _batch(2)
  images, tokens = batch["images"][:, 0], batch["decoder_input_tokens"]
  bumped = jax.tree.map(lambda x: x, params)
  pos = np.array(bumped["decoder"]["position_embedding"])
  pos[L - 1] += np.random.default_rng(0).standard_normal(pos.shape[1])  # not constant: LN
  bumped["decoder"]["position_embedding"] = pos
  for parallel, first_changes in ((ALL_PARALLEL, True), (ALL_AR, False)):
    before = np.asarray(logits(params, images, tokens, parallel))
    after = np.asarray(logits(bumped, images, tokens, parallel))
    assert np.abs(after[:, L - 1] - before[:, L - 1]).max() > 1e-3
    changed = np.abs(after[:, :L - 1] - before[:, :L - 1]).max() > 1e-3
    assert changed == first_changes


def test_ar_mask_is_causal(setup):
  _, params, logits = setup
  batch = _batch(3, (7, 7, 7))
  images, tokens = batch["images"][:, 0], batch["decoder_input_tokens"]
  base = np.asarray(logits(params, images, tokens, ALL_AR))
  for t in range(L):
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 5) % (VOCAB - 2) + 2
    out = np.asarray(logits(params, images, changed, ALL_AR))
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
    assert np.abs(out[:, t] - base[:, t]).max() > 1e-3, t


def test_rows_choose_their_own_mode(setup):
  """A mixed batch equals, row by row, the all-AR and all-parallel runs."""
  _, params, logits = setup
  batch = _batch(4)
  images, tokens = batch["images"][:, 0], batch["decoder_input_tokens"]
  mixed = np.array([True, False, True])
  out = np.asarray(logits(params, images, tokens, mixed))
  ar = np.asarray(logits(params, images, tokens, ALL_AR))
  par = np.asarray(logits(params, images, tokens, ALL_PARALLEL))
  np.testing.assert_allclose(out[mixed], par[mixed], atol=1e-5)
  np.testing.assert_allclose(out[~mixed], ar[~mixed], atol=1e-5)
  assert np.abs(ar - par).max() > 1e-3


def test_padding_positions_do_not_affect_real_positions_or_the_loss(setup, loss_for_modes):
  model, params, logits = setup
  batch = _batch(5, (3, 5, 2))
  garbage = dict(batch)
  tokens = batch["decoder_input_tokens"].copy()
  lengths = batch["decoder_loss_weights"].sum(1).astype(int)
  rng = np.random.default_rng(0)
  for i, n in enumerate(lengths):
    tokens[i, n:] = rng.integers(2, VOCAB, L - n)  # inputs after the last real target
  garbage["decoder_input_tokens"] = tokens
  images = batch["images"][:, 0]
  clean = np.asarray(logits(params, images, batch["decoder_input_tokens"], ALL_AR))
  dirty = np.asarray(logits(params, images, tokens, ALL_AR))
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(dirty[i, :n], clean[i, :n], atol=1e-6)
  assert np.abs(dirty - clean).max() > 1e-3  # the padding positions themselves did change
  for parallel in (ALL_AR, ALL_PARALLEL):
    np.testing.assert_allclose(loss_for_modes(params, garbage, parallel)[0],
                               loss_for_modes(params, batch, parallel)[0], rtol=1e-6)


@pytest.mark.parametrize("prob, flags", [(0.0, None), (1.0, ALL_PARALLEL)])
def test_masked_pred_prob_extremes_pick_one_mode(setup, loss_for_modes, prob, flags):
  model, params, _ = setup
  extreme = CapPaModel(model.config, image_size=IMG, max_target_len=L, masked_pred_prob=prob)
  extreme_loss = jax.jit(extreme.loss_fn)
  batch = _batch(6)
  ar_loss = float(loss_for_modes(params, batch, ALL_AR)[0])
  par_loss = float(loss_for_modes(params, batch, ALL_PARALLEL)[0])
  assert abs(ar_loss - par_loss) > 1e-3
  expected = par_loss if flags is not None else ar_loss
  for seed in range(4):
    loss, metrics = extreme_loss(params, batch, jax.random.PRNGKey(seed))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["parallel_fraction"]) == prob


def test_mixed_modes_follow_the_rng(setup, loss_for_modes):
  model, params, _ = setup
  loss_fn = jax.jit(model.loss_fn)
  batch = _batch(7)
  seen = set()
  for seed in range(6):
    rng = jax.random.PRNGKey(seed)
    flags = np.asarray(model.parallel_flags(jax.random.fold_in(rng, 0), B))
    seen.update(flags.tolist())
    loss = float(loss_fn(params, batch, rng)[0])
    np.testing.assert_allclose(loss, float(loss_fn(params, batch, rng)[0]), rtol=0)
    np.testing.assert_allclose(loss, float(loss_for_modes(params, batch, flags)[0]), rtol=1e-6)
  assert seen == {True, False}
  # Evaluation (rng=None) is the AR loss.
  np.testing.assert_allclose(float(jax.jit(model.eval_fn)(params, batch)[0]),
                             float(loss_for_modes(params, batch, ALL_AR)[0]), rtol=1e-6)


def test_decode_steps_reproduce_teacher_forced_logits(setup):
  """Feeding the teacher-forced inputs one step at a time through the KV cache gives the same
  logits as the full causal pass."""
  model, params, logits = setup
  batch = _batch(8, (7, 7, 7))
  images, tokens = batch["images"][:, 0], batch["decoder_input_tokens"]
  full = np.asarray(logits(params, images, tokens, ALL_AR))
  variables = {"params": params}

  @jax.jit
  def stepwise(images, tokens):
    encoded = model.module.apply(variables, images, method=CapPa.encode)
    cache = model.module.apply(variables, encoded, L, method=CapPa.init_decode_cache)

    def step_fn(cache, step_and_tokens):
      step, column = step_and_tokens
      step_logits, cache = model.module.apply(variables, cache, column[:, None], step,
                                              method=CapPa.decode_step)
      return cache, step_logits

    _, out = jax.lax.scan(step_fn, cache, (jnp.arange(L), tokens.T))
    return jnp.moveaxis(out, 0, 1)

  np.testing.assert_allclose(np.asarray(stepwise(images, tokens)), full, atol=1e-4)


def test_cached_greedy_equals_uncached_argmax(setup):
  model, params, logits = setup
  batch = _batch(9)
  tokens, aux = model.predict_batch_with_aux(params, batch)
  tokens, logprobs = np.asarray(tokens), np.asarray(aux["logprobs"])
  images = batch["images"][:, 0]
  inputs = np.zeros((B, L), np.int32)
  expected = np.zeros((B, L), np.int32)
  expected_logp = np.zeros((B, L), np.float32)
  done = np.zeros(B, bool)
  for i in range(L):
    step_logits = np.asarray(logits(params, images, inputs, ALL_AR))[:, i]
    choice = step_logits.argmax(-1)
    logp = jax.nn.log_softmax(step_logits)[np.arange(B), choice]
    expected[:, i] = np.where(done, 0, choice)
    expected_logp[:, i] = np.where(done, 0.0, logp)
    done |= choice == model.eos_id
    if i + 1 < L:
      inputs[:, i + 1] = choice
  np.testing.assert_array_equal(tokens, expected)
  np.testing.assert_allclose(logprobs, expected_logp, atol=1e-4)
  assert len(set(map(tuple, tokens))) > 1  # the images lead to different captions


def test_score_batch_is_the_sum_of_ar_log_likelihoods(setup):
  model, params, logits = setup
  batch = _batch(10, (4, 7, 2))
  scores = np.asarray(jax.jit(model.score_batch)(params, batch))
  # Independent reference: one causal pass per prefix, reading only the last position.
  images, targets = batch["images"][:, 0], batch["decoder_target_tokens"]
  expected = np.zeros(B)
  for i in range(B):
    for t in range(L):
      if targets[i, t] == 0:
        break
      prefix = np.zeros((B, L), np.int32)
      prefix[:, 1:t + 1] = targets[:, :t]
      step_logits = np.asarray(logits(params, images, prefix, ALL_AR))[i, t].astype(np.float64)
      log_z = np.log(np.exp(step_logits - step_logits.max()).sum()) + step_logits.max()
      expected[i] += step_logits[targets[i, t]] - log_z
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  # score_classes (image encoded once, classes mapped) gives the same numbers.
  classes = targets
  by_class = np.asarray(model.score_classes(params, batch["images"], classes))
  assert by_class.shape == (B, B)
  np.testing.assert_allclose(np.diag(by_class), scores, rtol=1e-5)


def test_bad_inputs_name_the_problem(setup):
  model, params, _ = setup
  batch = _batch(11)
  two_slots = dict(batch, images=np.repeat(batch["images"], 2, axis=1))
  with pytest.raises(ValueError, match="one image per example"):
    model.loss_fn(params, two_slots, None)
  with pytest.raises(KeyError, match="decoder_loss_weights"):
    model.score_batch(params, {k: v for k, v in batch.items() if k != "decoder_loss_weights"})
  too_long = {k: np.concatenate([v, v], axis=1) if k.startswith("decoder") else v
              for k, v in batch.items()}
  with pytest.raises(ValueError, match="max_len"):
    model.score_batch(params, too_long)
  with pytest.raises(ValueError, match="masked_pred_prob"):
    CapPaModel(model.config, masked_pred_prob=1.5)


def test_params_carry_logical_axis_names(setup):
  model, _, _ = setup
  boxed = jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0))["params"]
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  allowed = {"batch", "length", "embed", "heads", "kv", "mlp", "vocab", "patch", "channels", None}
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), jax.tree_util.keystr(path)
    assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
    assert set(leaf.names) <= allowed, (jax.tree_util.keystr(path), leaf.names)


def test_initial_logits_are_uniform(setup, loss_for_modes):
  """The zero-initialised logits layer (big_vision) makes the initial loss exactly log(V)."""
  model, random_params, _ = setup
  init = jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0))
  params = nn.meta.unbox(init["params"])
  logits_layer = params["decoder"]["logits"]
  assert not np.any(logits_layer["kernel"]) and not np.any(logits_layer["bias"])
  assert params["decoder"]["token_embedding"].shape == (VOCAB + 1, 32)  # + the [MASK] row
  # Zero logits on otherwise random weights: every mode's loss is log(V).
  random_params = dict(random_params, decoder=dict(random_params["decoder"], logits=logits_layer))
  for flags in (ALL_AR, ALL_PARALLEL):
    loss, _ = loss_for_modes(random_params, _batch(12), flags)
    np.testing.assert_allclose(float(loss), np.log(VOCAB), rtol=1e-6)
