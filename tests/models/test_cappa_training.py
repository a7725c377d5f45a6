"""A tiny CapPa learns four captions with the mixed AR/parallel loss: greedy decoding reproduces
them, zero-shot scoring ranks each image's own caption first, and parallel prediction (captions
from the image alone) gets them right too."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import flax.linen as nn

from palix.eval.zero_shot import classify_with_class_scores
from palix.models.base import shift_right
from palix.models.cappa import CapPaConfig, CapPaModel
from palix.models.vit import ViTConfig

IMG, L, STEPS = 16, 6, 200
# Characters are tokens: id = 2 + index in the alphabet (0 = pad, 1 = EOS).
ALPHABET = "abcdefghij"
CAPTIONS = ["abc", "bad", "cafe", "deaf"]  # shared prefixes and tokens: a caption is not a token


def tokenize(text):
  return [2 + ALPHABET.index(ch) for ch in text]


def _batch():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (len(CAPTIONS), 1, IMG, IMG, 3)).astype(np.float32)
  targets = np.zeros((len(CAPTIONS), L), np.int32)
  for i, caption in enumerate(CAPTIONS):
    ids = tokenize(caption) + [1]
    targets[i, :len(ids)] = ids
  return dict(images=images, decoder_input_tokens=np.asarray(shift_right(targets)),
              decoder_target_tokens=targets,
              decoder_loss_weights=(targets > 0).astype(np.float32))


@pytest.fixture(scope="module")
def trained():
  vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=IMG)
  config = CapPaConfig(vit=vit, vocab_size=2 + len(ALPHABET), max_len=L, decoder_depth=1)
  model = CapPaModel(config, image_size=IMG, max_target_len=L, masked_pred_prob=0.5)
  params = nn.meta.unbox(jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0))["params"])
  tx = optax.adam(3e-3)
  batch = _batch()

  @jax.jit
  def train(params):
    def step(carry, i):
      params, opt_state = carry
      (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
          params, batch, jax.random.fold_in(jax.random.PRNGKey(1), i))
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(STEPS))
    return params, losses

  params, losses = train(params)
  return model, params, batch, np.asarray(losses)


def test_loss_falls_to_near_zero(trained):
  _, _, _, losses = trained
  assert losses[0] > 2.0 and losses[-20:].max() < 0.05, (losses[0], losses[-20:])


def test_greedy_decoding_reproduces_the_captions(trained):
  model, params, batch, _ = trained
  tokens = np.asarray(model.predict_batch(params, batch))
  np.testing.assert_array_equal(tokens, batch["decoder_target_tokens"])


def test_parallel_prediction_reads_captions_off_the_image(trained):
  model, params, batch, _ = trained
  logits = jax.jit(model.compute_logits)(params, batch, np.ones(len(CAPTIONS), bool))
  weights = batch["decoder_loss_weights"] > 0
  predicted = np.asarray(logits).argmax(-1)
  np.testing.assert_array_equal(predicted[weights], batch["decoder_target_tokens"][weights])


def test_zero_shot_scoring_ranks_the_true_caption_first(trained):
  model, params, batch, _ = trained
  result = classify_with_class_scores(model, params, batch["images"], CAPTIONS, tokenize,
                                      labels=np.arange(len(CAPTIONS)))
  predictions, scores = result.predictions, result.scores
  np.testing.assert_array_equal(predictions, np.arange(len(CAPTIONS)))
  assert result.accuracy == 1.0
  # The scores are score_batch's numbers for the (image, caption) pairs.
  np.testing.assert_allclose(np.diag(scores), np.asarray(jax.jit(model.score_batch)(params, batch)),
                             rtol=1e-5, atol=1e-5)
  off_diagonal = scores[~np.eye(len(CAPTIONS), dtype=bool)]
  assert np.diag(scores).min() > off_diagonal.max() + 1.0


@pytest.mark.slow
def test_palix_train_drives_cappa_tiny(tmp_path):
  """``palix train`` on cappa_tiny with the in-memory synthetic task: the loss falls from log(V)."""
  import json

  import gin

  from palix.cli import main as cli_main

  gin.clear_config()
  try:
    assert cli_main.main([
        "train", "--gin_file=models/cappa/cappa_tiny.gin", "--gin_file=runs/pretrain.gin",
        "--gin_file=tests/training/synthetic_experiment.gin", "--gin.TRAIN_STEPS=20",
        "--gin.BATCH_SIZE=8", f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.trainer.train.log_period=5", "--gin.trainer.train.checkpoint_period=20",
        "--gin.trainer.train.progress_bar=False"]) == 0
  finally:
    gin.clear_config()
  log = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [5, 10, 15, 20]
  assert log[-1]["loss"] < 0.5 * np.log(2048)
  assert 0.0 < np.mean([r["parallel_fraction"] for r in log]) < 1.0
