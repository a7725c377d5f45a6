"""Soft MoE layer: routing weights, a float64 numpy re-derivation, equivariance, the dense-MLP
special case, padding and packed images, routing groups, capacity, noise, diagnostics, bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.layers.mlp import Mlp
from palix.layers.soft_moe import (MOE_METRICS, SoftMoe, SoftMoeConfig, collect_metrics,
                                   routing_weights)

_erf = np.vectorize(math.erf)
WIDTH, MLP_DIM = 8, 16


def np_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def np_soft_moe(p, x, segment_ids, max_images):
  """The paper's algorithm written per image with loops, in float64 (independent of the layer's
  einsums and masking): each image's tokens get their own E*P slots; padding gets zeros."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  mu = p["mu"] / np.sqrt((p["mu"] ** 2).sum(0, keepdims=True) + 1e-6)  # [D, E, P]
  width, experts, slots = mu.shape
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    for image in range(1, max_images + 1):
      idx = np.nonzero(segment_ids[b] == image)[0]
      if not len(idx):
        continue
      tokens = x[b, idx]  # [m, D]
      unit = tokens / np.sqrt((tokens ** 2).sum(-1, keepdims=True) + 1e-6)
      logits = p["scale"] * (unit @ mu.reshape(width, -1))  # [m, E*P]
      dispatch = np_softmax(logits, axis=0)  # over tokens
      combine = np_softmax(logits, axis=1)  # over all slots
      slot_in = (dispatch.T @ tokens).reshape(experts, slots, width)
      slot_out = np.zeros_like(slot_in)
      for e in range(experts):
        h = slot_in[e] @ p["wi"]["kernel"][e] + p["wi"]["bias"][e]
        h = 0.5 * h * (1 + _erf(h / np.sqrt(2)))
        slot_out[e] = h @ p["wo"]["kernel"][e] + p["wo"]["bias"][e]
      out[b, idx] = combine @ slot_out.reshape(experts * slots, width)
  return out


def layer(**config):
  return SoftMoe(SoftMoeConfig(**config), mlp_dim=MLP_DIM)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("mutable", "deterministic"))
def _run(config, params, x, segment_ids, mutable=False, deterministic=True, rng=None):
  rngs = None if rng is None else {"dropout": rng}
  return SoftMoe(config, mlp_dim=MLP_DIM).apply({"params": params}, x, segment_ids,
                                                deterministic=deterministic, mutable=mutable,
                                                rngs=rngs)


def run(moe, params, x, segment_ids=None, **kw):
  """``moe.apply`` compiled once per (config, shapes); eager flax runs op by op, slowly."""
  if segment_ids is None:
    segment_ids = np.ones(x.shape[:2], np.int32)
  return _run(moe.config, params, x, segment_ids, **kw)


@pytest.fixture(scope="module")
def packed():
  """Two rows of 7 tokens: row 0 = image 1 (3 tokens), image 2 (2 tokens), 2 padding; row 1 =
  one image of 7 tokens."""
  x = np.random.RandomState(0).standard_normal((2, 7, WIDTH)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 2, 2, 0, 0], [1] * 7], np.int32)
  return x, segment_ids


def test_routing_weights_normalisation():
  rng = np.random.RandomState(1)
  logits = rng.standard_normal((2, 6, 3, 2)).astype(np.float32) * 3
  segments = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  membership = segments[..., None] == np.arange(1, 3)  # [2, 6, 2]; row 1 has no image 2
  dispatch, combine = map(np.asarray, routing_weights(jnp.asarray(logits), membership))
  member = membership[..., None, None]
  assert dispatch.shape == combine.shape == (2, 6, 2, 3, 2)
  assert (dispatch[~np.broadcast_to(member, dispatch.shape)] == 0).all()
  assert (combine[~np.broadcast_to(member, combine.shape)] == 0).all()
  np.testing.assert_allclose(dispatch.sum(1)[0], 1, atol=1e-6)  # every slot, both images
  np.testing.assert_allclose(dispatch.sum(1)[1, 0], 1, atol=1e-6)
  assert (dispatch[1, :, 1] == 0).all()  # the empty image's slots read nothing (and no NaN)
  np.testing.assert_allclose(combine.sum((2, 3, 4))[segments > 0], 1, atol=1e-6)
  # Image 2 of row 0, against a softmax over just its tokens / just its slots.
  np.testing.assert_allclose(dispatch[0, 2:5, 1], np_softmax(logits[0, 2:5], axis=0), atol=1e-6)
  np.testing.assert_allclose(combine[0, 2:5, 1],
                             np_softmax(logits[0, 2:5].reshape(3, 6), 1).reshape(3, 3, 2),
                             atol=1e-6)


@pytest.mark.parametrize("experts, slots", [(3, 2), (1, 4)])
def test_layer_matches_numpy_reference(random_params, packed, experts, slots):
  x, segment_ids = packed
  moe = layer(num_experts=experts, slots_per_expert=slots, max_images_per_row=2)
  params = random_params(moe, x, segment_ids)
  params["scale"] = np.float32(2.5)
  got = np.asarray(run(moe, params, x, segment_ids))
  np.testing.assert_allclose(got, np_soft_moe(params, x, segment_ids, 2), atol=1e-4)


def test_permuting_tokens_permutes_outputs(random_params, packed):
  x, segment_ids = packed
  moe = layer(num_experts=3, slots_per_expert=2, max_images_per_row=2)
  params = random_params(moe, x, segment_ids)
  perm = np.random.RandomState(3).permutation(7)  # mixes images and padding within each row
  out = np.asarray(run(moe, params, x, segment_ids))
  permuted = np.asarray(run(moe, params, x[:, perm], segment_ids[:, perm]))
  np.testing.assert_allclose(permuted, out[:, perm], atol=1e-5)
  assert not np.allclose(out[:, perm], out, atol=1e-3)  # the permutation did move things


def test_one_expert_one_slot_per_token_identity_routing_is_the_dense_mlp(random_params):
  """Tokens along distinct axes, slot p's vector on token p's axis and a large scale: dispatch
  and combine are (to ~1e-20) the identity, so each slot holds one token and returns MLP(token)."""
  m = 4
  x = np.zeros((1, m, WIDTH), np.float32)
  x[0, np.arange(m), np.arange(m)] = [1.5, -0.7, 2.0, 0.3]  # token p along axis p
  x[0, :, m:] = 0.01 * np.random.RandomState(4).standard_normal((m, WIDTH - m))
  moe = layer(num_experts=1, slots_per_expert=m)
  params = random_params(moe, x)
  mu = np.zeros((WIDTH, 1, m), np.float32)
  mu[np.arange(m), 0, np.arange(m)] = np.sign([1.5, -0.7, 2.0, 0.3])
  params.update(mu=mu, scale=np.float32(60.0))
  got = run(moe, params, x)
  mlp_params = {name: {"kernel": params[name]["kernel"][0], "bias": params[name]["bias"][0]}
                for name in ("wi", "wo")}
  want = Mlp(MLP_DIM).apply({"params": mlp_params}, x)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_padding_gets_no_dispatch_weight_and_changes_nothing(random_params, packed):
  x, segment_ids = packed
  moe = layer(num_experts=3, slots_per_expert=2, max_images_per_row=2)
  params = random_params(moe, x, segment_ids)
  garbage = x.copy()
  garbage[0, 5:] = 1e3
  out, state = run(moe, params, garbage, segment_ids, mutable="intermediates")
  dispatch = np.asarray(state["intermediates"]["dispatch"][0])
  assert (dispatch[0, 5:] == 0).all()
  # Real tokens all feed their own image's slots (and only those).
  assert dispatch[0, :3, 0].min() > 0 and dispatch[0, 3:5, 1].min() > 0
  assert (dispatch[0, :3, 1] == 0).all() and (dispatch[0, 3:5, 0] == 0).all()
  out_clean, _ = run(moe, params, x, segment_ids, mutable="intermediates")
  np.testing.assert_allclose(out[:, :5], out_clean[:, :5], atol=1e-5)
  assert (np.asarray(out)[0, 5:] == 0).all()


def test_packed_images_route_as_if_alone(random_params, packed):
  """Image 2 of row 0 gives the same outputs as that image alone in a row of its own."""
  x, segment_ids = packed
  moe = layer(num_experts=3, slots_per_expert=2, max_images_per_row=2)
  params = random_params(moe, x, segment_ids)
  out = np.asarray(run(moe, params, x, segment_ids))
  alone = np.asarray(run(moe, params, x[:1, 3:5]))
  np.testing.assert_allclose(out[0, 3:5], alone[0], atol=1e-5)
  first = np.asarray(run(moe, params, x[:1, :3]))
  np.testing.assert_allclose(out[0, :3], first[0], atol=1e-5)


def test_images_beyond_max_images_per_row_are_reported_unrouted(random_params, packed):
  x, segment_ids = packed
  moe = layer(num_experts=3, slots_per_expert=2, max_images_per_row=1)
  params = random_params(moe, x, segment_ids)
  out, state = run(moe, params, x, segment_ids, mutable=MOE_METRICS)
  assert (np.asarray(out)[0, 3:5] == 0).all()  # image 2 is not routed: a zero MLP output
  metrics = collect_metrics(state)
  np.testing.assert_allclose(metrics["moe/unrouted_tokens"], 2 / 12, atol=1e-6)


def test_group_size_routes_contiguous_groups(random_params):
  x = np.random.RandomState(5).standard_normal((4, 6, WIDTH)).astype(np.float32)
  ones = np.ones((4, 6), np.int32)
  per_image = layer(num_experts=2, slots_per_expert=3)
  params = random_params(per_image, x)
  out = np.asarray(run(per_image, params, x))
  # group_size = tokens of an image is the default; two images per group is a [2, 12] batch.
  same = run(layer(num_experts=2, slots_per_expert=3, group_size=6), params, x, ones)
  np.testing.assert_allclose(same, out, atol=1e-6)
  two = run(layer(num_experts=2, slots_per_expert=3, group_size=12), params, x, ones)
  by_hand = run(per_image, params, x.reshape(2, 12, WIDTH))
  np.testing.assert_allclose(two, np.asarray(by_hand).reshape(4, 6, WIDTH), atol=1e-5)
  with pytest.raises(ValueError, match=r"SoftMoeConfig.group_size = 5 does not divide the 24"):
    jax.eval_shape(layer(num_experts=2, slots_per_expert=3, group_size=5).apply,
                   {"params": params}, x, ones)


@pytest.mark.parametrize("experts, factor, slots", [(4, 1.0, 4), (4, 0.5, 2), (3, 1.0, 5),
                                                    (64, 1.0, 1), (1, 2.0, 32)])
def test_slots_default_from_capacity_factor(experts, factor, slots):
  x = jnp.zeros((1, 16, WIDTH))
  moe = layer(num_experts=experts, capacity_factor=factor)
  shapes = jax.eval_shape(moe.init, jax.random.PRNGKey(0), x)["params"]
  assert shapes["mu"].value.shape == (WIDTH, experts, slots)
  assert shapes["wi"]["kernel"].value.shape == (experts, WIDTH, MLP_DIM)


def test_noise_only_in_training(random_params, packed):
  x, segment_ids = packed
  noisy = layer(num_experts=3, slots_per_expert=2, noise_std=0.5)
  params = random_params(noisy, x, segment_ids)
  clean = np.asarray(run(layer(num_experts=3, slots_per_expert=2), params, x, segment_ids))
  np.testing.assert_allclose(run(noisy, params, x, segment_ids), clean, atol=1e-6)
  draws = [np.asarray(run(noisy, params, x, segment_ids, deterministic=False,
                          rng=jax.random.PRNGKey(s))) for s in (0, 1)]
  assert not np.allclose(draws[0], draws[1], atol=1e-3)
  assert not np.allclose(draws[0], clean, atol=1e-3)
  quiet = run(layer(num_experts=3, slots_per_expert=2), params, x, segment_ids,
              deterministic=False, rng=jax.random.PRNGKey(0))
  np.testing.assert_allclose(quiet, clean, atol=1e-6)


def test_diagnostics_of_uniform_routing(random_params, packed):
  """Scale 0 makes every logit 0: dispatch is 1/(tokens of the image), combine 1/(E*P)."""
  x, segment_ids = packed
  moe = layer(num_experts=3, slots_per_expert=2, max_images_per_row=2)
  params = random_params(moe, x, segment_ids)
  params["scale"] = np.float32(0.0)
  _, state = run(moe, params, x, segment_ids, mutable=MOE_METRICS)
  metrics = {k: float(v) for k, v in collect_metrics(state).items()}
  # 6 slots in each of 3 images of 3, 2 and 7 tokens.
  want_dispatch = (1 / 3 + 1 / 2 + 1 / 7) / 3
  for name in ("dispatch_max", "dispatch_min"):
    assert metrics[f"moe/{name}"] == pytest.approx(want_dispatch, rel=1e-5)
  for name in ("combine_max", "combine_min"):
    assert metrics[f"moe/{name}"] == pytest.approx(1 / 6, rel=1e-5)
  assert metrics["moe/dispatch_max/layer0"] == metrics["moe/dispatch_max"]
  assert metrics["moe/scale"] == 0 and metrics["moe/unrouted_tokens"] == 0
  # Cosine similarities, recomputed: mean over real tokens and slots; per slot, the best token.
  unit = x / np.sqrt((x ** 2).sum(-1, keepdims=True) + 1e-6)
  mu = np.asarray(params["mu"]).reshape(WIDTH, 6)
  cos = unit @ (mu / np.sqrt((mu ** 2).sum(0) + 1e-6))
  real = segment_ids > 0
  assert metrics["moe/similarity_mean"] == pytest.approx(cos[real].mean(), abs=1e-5)
  best = [cos[0, :3].max(0), cos[0, 3:5].max(0), cos[1].max(0)]
  assert metrics["moe/similarity_max"] == pytest.approx(np.mean(best), abs=1e-5)


def test_no_metrics_without_the_collection():
  assert collect_metrics({}) == {} and collect_metrics({"intermediates": {}}) == {}


@pytest.mark.parametrize("options, message", [
    (dict(num_experts=0), r"SoftMoeConfig.num_experts = 0: must be a positive integer"),
    (dict(), r"SoftMoeConfig.num_experts = None: must be set"),
    (dict(num_experts=4, slots_per_expert=0), r"SoftMoeConfig.slots_per_expert = 0: must be a "
     "positive integer"),
    (dict(num_experts=4, capacity_factor=0.0), r"SoftMoeConfig.capacity_factor = 0.0"),
    (dict(num_experts=4, last_n_layers=0), r"SoftMoeConfig.last_n_layers = 0: .* within the "
     r"ViT's 12 blocks"),
    (dict(num_experts=4, last_n_layers=13), r"SoftMoeConfig.last_n_layers = 13"),
    (dict(num_experts=4, group_size=20), r"SoftMoeConfig.group_size = 20: does not divide the "
     "16 tokens of an image"),
    (dict(num_experts=4, noise_std=-1.0), r"SoftMoeConfig.noise_std = -1.0: must be >= 0"),
    (dict(num_experts=4, max_images_per_row=0), r"SoftMoeConfig.max_images_per_row = 0"),
])
def test_bad_config_names_the_binding(options, message):
  with pytest.raises(ValueError, match=message):
    SoftMoeConfig(**options).validate(depth=12, tokens_per_image=16)


def test_good_group_sizes_pass():
  for group_size in (4, 16, 32):
    SoftMoeConfig(num_experts=4, group_size=group_size).validate(depth=12, tokens_per_image=16)
