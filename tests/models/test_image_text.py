"""The SigLIP image-text model: the loss against a direct computation, repeated captions as
positives, zero-shot classification after a few steps, and both text towers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from palix.models import image_text
from palix.models.t5 import T5Config
from palix.models.text_tower import T5TextTowerConfig, TextTowerConfig
from palix.models.vit import GlobalAveragePool, ViTConfig

VIT = ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, image_size=16,
                pool=GlobalAveragePool)
TEXT = TextTowerConfig(vocab_size=32, max_len=4, width=16, depth=1, mlp_dim=32, num_heads=2)


def _siglip_by_hand(logits, texts):
  """-1/B sum_ij log sigmoid(z_ij logit_ij), z = +1 where the captions are equal."""
  b = len(texts)
  total = 0.0
  for i in range(b):
    for j in range(b):
      z = 1.0 if tuple(texts[i]) == tuple(texts[j]) else -1.0
      total += np.log1p(np.exp(-z * logits[i, j]))
  return total / b


def test_sigmoid_loss_matches_direct_computation_with_repeated_captions():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 4)) * 3
  texts = np.array([[5, 1], [6, 1], [5, 1], [7, 1]])  # rows 0 and 2 share a caption
  positives = np.asarray(image_text.same_text(jnp.asarray(texts)))
  expected_positives = np.eye(4, dtype=bool)
  expected_positives[0, 2] = expected_positives[2, 0] = True
  np.testing.assert_array_equal(positives, expected_positives)
  np.testing.assert_allclose(image_text.sigmoid_loss(jnp.asarray(logits), positives),
                             _siglip_by_hand(logits, texts), rtol=1e-5)


@pytest.fixture(scope="module")
def model():
  return image_text.ImageTextModel(image_text.ImageTextConfig(vit=VIT, text=TEXT, embed_dim=8),
                                   image_size=16, max_text_len=4)


def _colour_batch():
  """Four flat colours, each with its own caption; two copies of each (repeated captions)."""
  colours = np.array([[-0.8, -0.8, 0.8], [0.8, -0.8, -0.8], [-0.8, 0.8, -0.8], [0.8, 0.8, 0.8]])
  images = np.repeat(colours, 2, axis=0)[:, None, None, None, :] * np.ones((1, 1, 16, 16, 3))
  texts = np.repeat(np.array([[3, 1, 0, 0], [4, 1, 0, 0], [5, 9, 1, 0], [6, 1, 0, 0]]), 2, 0)
  return {"images": images.astype(np.float32), "decoder_target_tokens": texts.astype(np.int32)}


def test_training_gives_zero_shot_classification_and_consistent_scores(model):
  params = nn.meta.unbox(model.get_initial_variables(jax.random.key(0))["params"])
  np.testing.assert_allclose(params["logit_scale"], np.log(10.0))
  np.testing.assert_allclose(params["logit_bias"], -10.0)
  batch = _colour_batch()
  tx = optax.adam(1e-2)

  @jax.jit
  def step(p, state):
    (loss, metrics), grads = jax.value_and_grad(
        lambda q: model.loss_fn(q, batch, jax.random.key(0)), has_aux=True)(p)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss, metrics

  state = tx.init(params)
  first = None
  for _ in range(60):
    params, state, loss, metrics = step(params, state)
    first = float(loss) if first is None else first
  assert float(loss) < 0.5 * first and float(metrics["retrieval_accuracy"]) == 1.0
  classes = np.array([[3, 1, 0, 0], [4, 1, 0, 0], [5, 9, 1, 0], [6, 1, 0, 0]], np.int32)
  logits = np.asarray(model.zero_shot_logits(params, batch["images"], classes))
  np.testing.assert_array_equal(logits.argmax(1), np.repeat(np.arange(4), 2))
  # score_batch is log sigmoid of each image with its own caption: the diagonal of the table
  scores = np.asarray(model.score_batch(params, batch))
  own = logits[np.arange(8), np.repeat(np.arange(4), 2)]
  np.testing.assert_allclose(scores, jax.nn.log_sigmoid(own), rtol=1e-4, atol=1e-5)
  embeddings, aux = model.predict_batch_with_aux(params, batch)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)
  assert aux["text_embeddings"].shape == (8, 8)


def test_t5_text_tower_is_a_gin_choice():
  t5 = T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                num_encoder_layers=1, num_decoder_layers=1)
  model = image_text.ImageTextModel(image_text.ImageTextConfig(
      vit=VIT, text=T5TextTowerConfig(t5=t5), embed_dim=8), image_size=16, max_text_len=4)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.key(0))["params"])
  assert set(params["text"]["t5"]) == {"token_embedder", "encoder"}  # no decoder parameters
  loss, _ = model.loss_fn(params, _colour_batch(), None)
  assert np.isfinite(float(loss))


def test_bad_batches_name_the_problem(model):
  params = nn.meta.unbox(model.get_initial_variables(jax.random.key(0))["params"])
  batch = _colour_batch()
  with pytest.raises(KeyError, match="decoder_target_tokens"):
    model.loss_fn(params, {"images": batch["images"]}, None)
  two_slots = np.concatenate([batch["images"], batch["images"]], axis=1)
  with pytest.raises(ValueError, match="2 image slots"):
    model.loss_fn(params, dict(batch, images=two_slots), None)
  with pytest.raises(ValueError, match="pooled"):
    nopool = image_text.ImageTextModel(image_text.ImageTextConfig(
        vit=ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, image_size=16),
        text=TEXT, embed_dim=8), image_size=16, max_text_len=4)
    nopool.get_initial_variables(jax.random.key(0))
