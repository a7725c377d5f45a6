"""Loss semantics against an independent numpy formulation (KL to the smoothed target)."""

import numpy as np
import pytest

from palix.models import losses


def _numpy_reference(logits, targets, weights, ls, z):
  logits = logits.astype(np.float64)
  v = logits.shape[-1]
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  logp = logits - log_z[..., None]
  soft = np.full(logits.shape, ls / (v - 1))
  np.put_along_axis(soft, targets[..., None], 1 - ls, axis=-1)
  # KL(soft || p): cross-entropy minus the entropy of the smoothed target.
  kl = (soft * (np.log(np.where(soft > 0, soft, 1)) - logp)).sum(-1)
  per_token = kl + z * log_z ** 2
  return (per_token * weights).sum() / weights.sum()


@pytest.mark.parametrize("ls,z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4), (0.2, 1e-3)])
def test_weighted_cross_entropy_matches_reference(ls, z):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(3, 5))
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  loss, metrics = losses.weighted_cross_entropy_loss(logits, targets, weights, label_smoothing=ls,
                                                     z_loss=z)
  np.testing.assert_allclose(float(loss), _numpy_reference(logits, targets, weights, ls, z),
                             rtol=1e-5)
  assert float(metrics["num_tokens"]) == weights.sum()


def test_perfect_prediction_has_zero_smoothed_loss():
  v, ls = 7, 0.1
  targets = np.array([[2, 4]])
  probs = np.full((1, 2, v), ls / (v - 1))
  np.put_along_axis(probs, targets[..., None], 1 - ls, axis=-1)
  loss, _ = losses.weighted_cross_entropy_loss(np.log(probs), targets, np.ones((1, 2)),
                                               label_smoothing=ls)
  assert abs(float(loss)) < 1e-5


def test_sequence_normalization_weights_each_example_equally():
  logits = np.zeros((2, 4, 3), np.float32)
  logits[0, :, 0] = 5.0  # example 0 confidently right on token 0 targets
  targets = np.zeros((2, 4), np.int64)
  weights = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], np.float32)
  per_token = -np.log(np.exp(5) / (np.exp(5) + 2)), np.log(3)
  loss_seq, _ = losses.weighted_cross_entropy_loss(logits, targets, weights,
                                                   normalization="sequences")
  np.testing.assert_allclose(float(loss_seq), (per_token[0] + per_token[1]) / 2, rtol=1e-5)
  loss_tok, _ = losses.weighted_cross_entropy_loss(logits, targets, weights)
  np.testing.assert_allclose(float(loss_tok), (4 * per_token[0] + per_token[1]) / 5, rtol=1e-5)
