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


def _ordinal_reference(logits, targets, first, bins, sigma, z):
  """KL(q || p) per token, with q a normalised Gaussian over the bins for ordinal targets."""
  logits = logits.astype(np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  logp = logits - log_z[..., None]
  out = np.empty(targets.shape)
  for index in np.ndindex(targets.shape):
    q = np.zeros(logits.shape[-1])
    q[targets[index]] = 1.0
    if first <= targets[index] < first + bins:
      q[:] = 0.0
      q[first:first + bins] = np.exp(-0.5 * ((np.arange(bins) - (targets[index] - first)) / sigma)
                                     ** 2)
      q /= q.sum()
    kept = q > 0
    out[index] = (q[kept] * (np.log(q[kept]) - logp[index][kept])).sum() + z * log_z[index] ** 2
  return out


@pytest.mark.parametrize("sigma", [0.5, 3.0])
def test_ordinal_targets_are_gaussians_over_the_bins(sigma):
  rng = np.random.default_rng(1)
  first, bins, vocab = 3, 12, 20
  logits = (rng.normal(size=(2, 6, vocab)) * 2).astype(np.float32)
  targets = rng.integers(0, vocab, size=(2, 6))
  targets[0, :3] = [first, first + 5, first + bins - 1]  # edges and middle of the bin range
  weights = np.ones((2, 6), np.float32)
  loss, _ = losses.weighted_cross_entropy_loss(logits, targets, weights, z_loss=1e-3,
                                               ordinal_bins=(first, bins, sigma))
  expected = _ordinal_reference(logits, targets, first, bins, sigma, 1e-3).mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_ordinal_loss_prefers_a_near_miss_and_is_zero_at_its_target():
  first, bins, sigma, vocab = 3, 32, 2.0, 40
  targets = np.array([[first + 10]])

  def loss_of_peak_at(bin_):
    logits = np.full((1, 1, vocab), -10.0, np.float32)
    logits[0, 0, first + bin_] = 10.0
    return float(losses.weighted_cross_entropy_loss(
        logits, targets, np.ones((1, 1)), z_loss=0.0, ordinal_bins=(first, bins, sigma))[0])

  assert loss_of_peak_at(10) < loss_of_peak_at(11) < loss_of_peak_at(14) < loss_of_peak_at(25)
  q = np.exp(-0.5 * ((np.arange(bins) - 10) / sigma) ** 2)
  logits = np.full((1, 1, vocab), -1e4, np.float32)
  logits[0, 0, first:first + bins] = np.log(q / q.sum())
  loss, _ = losses.weighted_cross_entropy_loss(logits, targets, np.ones((1, 1)), z_loss=0.0,
                                               ordinal_bins=(first, bins, sigma))
  assert abs(float(loss)) < 1e-5
