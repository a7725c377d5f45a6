"""The OWL detector: box bias at patch centres, instance selection and token dropping leave the
kept tokens' outputs as they are, padded queries never score or match, the loss trains."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from palix.layers import box_heads
from palix.layers import token_dropping
from palix.models import owl
from palix.models.text_tower import TextTowerConfig
from palix.models.vit import GlobalAveragePool, ViTConfig

GRID = 4  # 32 px images, patch 8: 16 tokens
VIT = ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, image_size=32,
                pool=GlobalAveragePool)
TEXT = TextTowerConfig(vocab_size=64, max_len=3, width=16, depth=1, mlp_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def model():
  return owl.OwlModel(owl.OwlConfig(vit=VIT, text=TEXT, embed_dim=8), image_size=32,
                      max_queries=4, max_query_len=3)


@pytest.fixture(scope="module")
def fresh_params(model):
  return nn.meta.unbox(model.get_initial_variables(jax.random.key(0))["params"])


@pytest.fixture(scope="module")
def params(fresh_params):
  """Every parameter random (zero-initialised heads too), so no output is trivially equal."""
  leaves, tree = jax.tree.flatten(fresh_params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def _images(batch=2, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)


QUERIES = np.array([[[5, 9, 1], [7, 1, 0], [0, 0, 0], [0, 0, 0]],
                    [[11, 1, 0], [5, 9, 1], [13, 2, 1], [0, 0, 0]]], np.int32)


def test_untrained_box_head_puts_every_box_on_its_patch(model, fresh_params):
  out = model.module.apply({"params": fresh_params}, _images(), QUERIES)
  centres = (np.arange(GRID) + 0.5) / GRID
  cy, cx = np.meshgrid(centres, centres, indexing="ij")
  expected = np.stack([cx.ravel(), cy.ravel(), np.full(16, 1 / GRID), np.full(16, 1 / GRID)], -1)
  np.testing.assert_allclose(out["pred_boxes"], np.broadcast_to(expected, (2, 16, 4)), atol=1e-3)
  np.testing.assert_allclose(jax.nn.sigmoid(box_heads.box_bias(GRID, GRID)), expected, atol=1e-3)
  # logits start at (cosine + logit(prior) / scale) * scale: within `scale` of logit(prior)
  prior = np.log(0.01 / 0.99)
  assert np.all(np.abs(np.asarray(out["logits"][0, :, :2]) - prior) <= 1.0 + 1e-4)
  sharp = owl.OwlModel(owl.OwlConfig(vit=VIT, text=TEXT, embed_dim=8, class_logit_scale=10.0),
                       image_size=32, max_queries=4, max_query_len=3)
  variables = sharp.get_initial_variables(jax.random.key(0))
  logits = np.asarray(sharp.module.apply(variables, _images(), QUERIES)["logits"][0, :, :2])
  cosine = logits / 10.0 - prior / 10.0
  assert np.all(np.abs(cosine) <= 1.0 + 1e-4) and np.ptp(logits) > 2.0  # 10x the spread
  with pytest.raises(ValueError, match="scale_init must be >= 1"):  # elu(s) + 1 starts >= 1
    box_heads.ClassPredictor(8, scale_init=0.5).init(
        jax.random.key(0), np.zeros((1, 2, 4), np.float32), np.zeros((1, 1, 8), np.float32))


def test_instance_selection_keeps_the_selected_tokens_outputs(model, params):
  images = _images()
  full = model.module.apply({"params": params}, images, QUERIES)
  top = model.module.apply({"params": params}, images, QUERIES, top_k=5)
  expected_index = np.sort(np.argsort(-np.asarray(full["objectness"]), axis=1)[:, :5], axis=1)
  np.testing.assert_array_equal(top["token_index"], expected_index)
  for key in ("pred_boxes", "logits", "objectness"):
    gathered = np.take_along_axis(np.asarray(full[key]),
                                  expected_index.reshape((2, 5) + (1,) * (full[key].ndim - 2)), 1)
    np.testing.assert_allclose(top[key], gathered, rtol=1e-5, atol=1e-6, err_msg=key)


def _masked_reference(module, images, keep_mask):
  """The full ViT with the dropped tokens masked out of attention (and of the pooling)."""
  vit = module.vit
  x, (gh, gw) = vit.embedding(images)
  ys, xs = jnp.divmod(jnp.arange(gh * gw), gw)
  b = images.shape[0]
  x = x + vit.posemb(jnp.broadcast_to(ys, (b, gh * gw)), jnp.broadcast_to(xs, (b, gh * gw)),
                     (gh, gw))
  tokens, _ = vit.encoder(x, keep_mask.astype(jnp.int32))
  return tokens


def test_token_dropping_equals_masking_the_dropped_tokens(model, params):
  images = _images(seed=3)
  images[0, :16, :16] = 0.2  # four flat patches: the first to go
  keep = 10
  tokens, index = model.module.apply({"params": params}, images, keep,
                                     method=owl.OwlDetector.image_tokens)
  variance = np.asarray(token_dropping.patch_variance(images, 8))
  expected = np.sort(np.argsort(-variance, axis=1, kind="stable")[:, :keep], axis=1)
  np.testing.assert_array_equal(index, expected)
  assert not set(index[0].tolist()) & {0, 1, 4, 5}  # the flat patches were dropped
  mask = np.zeros((2, 16), bool)
  np.put_along_axis(mask, expected, True, axis=1)
  reference = model.module.apply({"params": params}, images, jnp.asarray(mask),
                                 method=_masked_reference)
  np.testing.assert_allclose(tokens, np.take_along_axis(np.asarray(reference),
                                                        expected[..., None], 1),
                             rtol=1e-4, atol=1e-5)
  # each kept token's box bias is its own patch's
  out = model.module.apply({"params": params}, images, QUERIES, keep=keep)
  np.testing.assert_array_equal(out["token_index"], expected)
  bias = np.asarray(box_heads.box_bias(GRID, GRID))[expected]
  box_mlp = model.module.apply({"params": params}, tokens,
                               method=lambda m, t: m.box_head(t))
  np.testing.assert_allclose(out["pred_boxes"], jax.nn.sigmoid(box_mlp + bias), rtol=1e-5)


def _batch(num_queries=4):
  boxes = np.zeros((2, 3, 4), np.float32)
  boxes[0, :2] = [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]
  boxes[1, :1] = [[0.5, 0.5, 0.4, 0.4]]
  return {"images": _images(seed=5), "query_tokens": QUERIES[:, :num_queries],
          "boxes": boxes, "box_labels": np.array([[0, 1, -1], [2, -1, -1]], np.int32)}


def test_padded_queries_never_score_or_match(model, params):
  batch = _batch()
  out = model.module.apply({"params": params}, batch["images"], batch["query_tokens"])
  np.testing.assert_array_equal(out["logits"][0, :, 2:], box_heads.PADDED_QUERY_LOGIT)
  np.testing.assert_array_equal(out["logits"][1, :, 3:], box_heads.PADDED_QUERY_LOGIT)
  _, aux = model.predict_batch_with_aux(params, batch, num_detections=2 * 16)
  assert np.all(np.asarray(aux["labels"])[0] < 2) and np.all(np.asarray(aux["labels"])[1] < 3)
  # appending padded queries changes neither the matching nor the loss
  short = dict(batch, query_tokens=QUERIES[:, :3])
  _, matched_long, losses_long = model.matched_outputs(params, batch)
  _, matched_short, losses_short = model.matched_outputs(params, short)
  np.testing.assert_array_equal(matched_long, matched_short)
  for key in losses_long:
    np.testing.assert_allclose(losses_long[key], losses_short[key], rtol=1e-5, err_msg=key)
  assert np.all(np.asarray(matched_long)[batch["box_labels"] < 0] == -1)


def test_gradients_are_finite_with_padded_queries_at_initialisation(model, fresh_params):
  # A padded query's embedding is exactly zero at initialisation (zero projection bias).
  grads = jax.grad(lambda p: model.loss_fn(p, _batch(), jax.random.key(0))[0])(fresh_params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_loss_trains_and_scores(model, params):
  batch = _batch()
  tx = optax.adam(3e-3)

  @jax.jit
  def step(p, state):
    (loss, metrics), grads = jax.value_and_grad(
        lambda q: model.loss_fn(q, batch, jax.random.key(0)), has_aux=True)(p)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss, metrics

  p, state = params, tx.init(params)
  losses = []
  for _ in range(40):
    p, state, loss, metrics = step(p, state)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses[::8]
  assert float(metrics["num_instances"]) == 3 and float(metrics["matched_iou"]) > 0.5
  scores = model.score_batch(p, batch)
  assert scores.shape == (2,) and np.all(np.asarray(scores) <= 0)


def test_bad_batches_and_configs_name_the_problem(model, params):
  with pytest.raises(KeyError, match="box_labels"):
    model.loss_fn(params, {k: v for k, v in _batch().items() if k != "box_labels"}, None)
  with pytest.raises(ValueError, match="query_tokens"):
    model.predict_batch_with_aux(params, dict(_batch(), query_tokens=QUERIES[0]))
  with pytest.raises(ValueError, match="class_token"):
    owl.OwlConfig(vit=dataclasses.replace(VIT, class_token=True), text=TEXT).resolved_vit()
  with pytest.raises(ValueError, match="keep_fraction"):
    owl.OwlModel(owl.OwlConfig(vit=VIT, text=TEXT), keep_fraction=1.5)
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS\['query_length'\] = 5 .* "
                                       r"OwlModel.max_query_len = 3"):
    model.check_feature_lengths({"queries": 4, "query_length": 5, "instances": 4})
  model.check_feature_lengths({"queries": 4, "query_length": 3, "instances": 4})
