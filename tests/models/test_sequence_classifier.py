"""The sequence classifier (parity): padding invariance, the loss with the ponder term against
numpy, scoring, and the gin files trained by ``palix train``'s trainer for a few steps."""

import json
import pathlib

import gin
import jax
from flax import linen as nn
import numpy as np
import pytest

from palix import config as palix_config
from palix.layers.adatape import AdaTapeConfig
from palix.models.sequence_classifier import (SequenceClassifierConfig,
                                              SequenceClassifierModel)
from palix.models.vit import ViTConfig
from palix.tasks.sources.parity import parity_batches
from palix.training import trainer

ENCODER = ViTConfig(width=16, depth=2, mlp_dim=32, num_heads=2)
TAPE = AdaTapeConfig(max_tape_tokens=4, top_k=2, threshold=1.6, ponder_loss_weight=0.5)


def model(tape=None):
  return SequenceClassifierModel(SequenceClassifierConfig(encoder=ENCODER, max_length=8,
                                                          adatape=tape))


def random_params(m, seed=0):
  """Random parameters of ``m`` (shapes from ``jax.eval_shape``: nothing runs eagerly)."""
  shapes = jax.eval_shape(m.get_initial_variables, jax.random.PRNGKey(seed))["params"]
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda x: 0.3 * rng.standard_normal(x.shape).astype(x.dtype),
                      nn.meta.unbox(shapes))


def batch(length=8, size=6):
  return next(parity_batches("parity", split="train", batch_size=size,
                             feature_lengths={"inputs": length}, lengths=(3, 5, 6)))


def test_padding_changes_nothing():
  """The same sequences padded to 8 or to 6 positions: equal logits, with and without a tape."""
  for tape in (None, TAPE):
    m = model(tape)
    params = random_params(m)
    long = batch()
    short = {**long, "inputs": long["inputs"][:, :6]}
    assert (long["inputs"][:, 6:] == 0).all()
    apply = jax.jit(m.apply)
    np.testing.assert_allclose(apply(params, short)[0], apply(params, long)[0], atol=1e-5)


def test_loss_is_cross_entropy_plus_weighted_ponder_cost():
  m = model(TAPE)
  params = random_params(m, seed=1)
  b = batch()
  # One compilation for everything this test calls.
  everything = jax.jit(lambda p, b: (m.apply(p, b), m.loss_fn(p, b, None), m.score_batch(p, b),
                                     m.predict_batch_with_aux(p, b)))
  (logits, out), (loss, metrics), scores, (predictions, aux) = everything(params, b)
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -logp[np.arange(6), b["labels"]].mean()
  ponder = np.asarray(out["ponder_cost"]).mean()
  used = np.asarray(out["tape_tokens_used"])
  assert 1 <= used.min() and used.max() <= 4
  assert float(loss) == pytest.approx(ce + 0.5 * ponder, abs=1e-5)
  assert float(metrics["cross_entropy"]) == pytest.approx(ce, abs=1e-5)
  assert float(metrics["tape_tokens_mean"]) == pytest.approx(used.mean())
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == b["labels"]))
  np.testing.assert_allclose(scores, logp[np.arange(6), b["labels"]], atol=1e-5)
  np.testing.assert_array_equal(predictions, logits.argmax(-1))
  np.testing.assert_array_equal(aux["tape_tokens_used"], used)


def test_config_errors_name_the_binding():
  with pytest.raises(ValueError, match=r"may need 10 distinct bank entries but the bank has 8 "
                                       r"\(InputTapeBank over 8 input items\)"):
    model(AdaTapeConfig(max_tape_tokens=5, top_k=2))
  with pytest.raises(ValueError, match=r"tape_layer = 3 \(bound as "
                                       r"SequenceClassifierConfig.adatape\) is outside the depth"):
    model(AdaTapeConfig(max_tape_tokens=4, top_k=2, tape_layer=3))


@pytest.mark.parametrize("model_file,tape", [("parity_tiny.gin", False),
                                             ("parity_adatape_tiny.gin", True)])
def test_gin_files_build_the_two_models(model_file, tape):
  gin.clear_config()
  try:
    palix_config.parse_gin([f"models/parity/{model_file}"], [], finalize=False)
    m = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(m, SequenceClassifierModel)
  assert (m.config.encoder.width, m.config.encoder.depth, m.config.max_length) == (64, 2, 16)
  assert (m.config.adatape is not None) == tape


@pytest.mark.slow  # ~8 s on an idle 2-core machine (two compilations of the train step)
def test_gin_files_train(tmp_path):
  """The documented AdaTape model + run + experiment files: three steps of ``trainer.train``,
  the tape tokens per example logged."""
  gin.clear_config()
  try:
    palix_config.parse_gin(
        ["models/parity/parity_adatape_tiny.gin", "runs/pretrain.gin",
         "experiments/adatape_parity.gin"],
        [f"MODEL_DIR = '{tmp_path}'", "TRAIN_STEPS = 3", "BATCH_SIZE = 8",
         "trainer.train.log_period = 1", "trainer.train.progress_bar = False",
         "schedules.cosine.warmup_steps = 1", "ViTConfig.width = 16", "ViTConfig.mlp_dim = 32"])
    trainer.train()
  finally:
    gin.clear_config()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for r in rows:
    assert 4 <= r["tape_tokens_min"] <= r["tape_tokens_mean"] <= r["tape_tokens_max"] <= 8
    assert r["loss"] == pytest.approx(r["cross_entropy"] + 0.01 * r["ponder_cost"], abs=1e-5)
  assert pathlib.Path(tmp_path, "checkpoints").is_dir()
