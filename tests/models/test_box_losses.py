"""Focal, L1 and GIoU detection losses on hand-computed cases."""

import jax.numpy as jnp
import numpy as np

from palix.models import box_losses

CONFIG = box_losses.DetectionLossConfig()  # alpha 0.3, gamma 2, all weights 1


def _focal_by_hand(logit, target, alpha=0.3, gamma=2.0):
  p = 1 / (1 + np.exp(-logit))
  p_t = p if target else 1 - p
  alpha_t = alpha if target else 1 - alpha
  return -alpha_t * (1 - p_t) ** gamma * np.log(p_t)


def test_sigmoid_focal_loss_by_hand():
  logits = jnp.array([0.0, 0.0, 2.0, -3.0, 10.0])
  targets = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
  ours = np.asarray(box_losses.sigmoid_focal_loss(logits, targets))
  expected = [_focal_by_hand(float(x), bool(t)) for x, t in zip(logits, targets)]
  np.testing.assert_allclose(ours, expected, rtol=1e-5)
  np.testing.assert_allclose(ours[0], 0.3 * 0.25 * np.log(2), rtol=1e-6)  # p = 1/2
  # gamma 0, no alpha: plain binary cross-entropy
  plain = box_losses.sigmoid_focal_loss(logits, targets, alpha=-1.0, gamma=0.0)
  np.testing.assert_allclose(plain[2], np.log1p(np.exp(-2.0)), rtol=1e-6)


def test_match_targets_one_hot_at_matched_token_and_label():
  matched = jnp.array([[2, 0, -1]])
  labels = jnp.array([[1, 0, -1]])
  targets = np.asarray(box_losses.match_targets(matched, labels, num_tokens=3, num_queries=2))
  expected = np.zeros((1, 3, 2))
  expected[0, 2, 1] = expected[0, 0, 0] = 1
  np.testing.assert_array_equal(targets, expected)


def test_detection_losses_by_hand():
  # One image, 2 tokens, 2 queries (the second padded), 1 instance matched to token 1.
  logits = jnp.array([[[0.0, -1e6], [2.0, -1e6]]])
  pred = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.4, 0.5, 0.2, 0.4]]])
  gt = jnp.array([[[0.5, 0.5, 0.2, 0.2]]])
  labels = jnp.array([[0]])
  matched = jnp.array([[1]])
  objectness = jnp.array([[0.0, 1.0]])
  query_mask = jnp.array([[1, 0]])
  losses = box_losses.detection_losses(
      {"logits": logits, "pred_boxes": pred, "objectness": objectness}, matched, gt, labels,
      query_mask, CONFIG)
  focal = _focal_by_hand(0.0, False) + _focal_by_hand(2.0, True)  # the padded query adds 0
  np.testing.assert_allclose(losses["focal"], [focal], rtol=1e-5)
  np.testing.assert_allclose(losses["l1"], [0.1 + 0.0 + 0.0 + 0.2], rtol=1e-5)
  # matched box (cx .4, cy .5, w .2, h .4) = yxyx (.3, .3, .7, .5) vs gt (.4, .4, .6, .6):
  # intersection .2 x .1 = .02, union .08 + .04 - .02 = .10, enclosing .4 x .3 = .12
  giou = 0.02 / 0.10 - (0.12 - 0.10) / 0.12
  np.testing.assert_allclose(losses["giou"], [1 - giou], rtol=1e-5)
  obj = _focal_by_hand(0.0, False) + _focal_by_hand(1.0, True)
  np.testing.assert_allclose(losses["objectness"], [obj], rtol=1e-5)
  np.testing.assert_allclose(box_losses.total_loss(losses, CONFIG),
                             focal + 0.3 + (1 - giou) + obj, rtol=1e-5)


def test_per_example_normalisation_and_padding():
  # Two instances in image 0 (loss / 2), none in image 1 (its loss / 1, only negatives).
  logits = jnp.zeros((2, 3, 1))
  pred = jnp.full((2, 3, 4), 0.5)
  gt = jnp.array([[[0.4, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0, 0, 0, 0]],
                  [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
  labels = jnp.array([[0, 0, -1], [-1, -1, -1]])
  matched = jnp.array([[0, 2, -1], [-1, -1, -1]])
  losses = box_losses.detection_losses({"logits": logits, "pred_boxes": pred}, matched, gt,
                                       labels, jnp.ones((2, 1)), CONFIG)
  np.testing.assert_allclose(losses["num_instances"], [2, 0])
  l1_image0 = (0.1 + 0.0 + 0.3 + 0.3) + (0.0 + 0.0 + 0.3 + 0.3)
  np.testing.assert_allclose(losses["l1"], [l1_image0 / 2, 0.0], rtol=1e-5)
  focal0 = (2 * _focal_by_hand(0.0, True) + _focal_by_hand(0.0, False)) / 2
  focal1 = 3 * _focal_by_hand(0.0, False)
  np.testing.assert_allclose(losses["focal"], [focal0, focal1], rtol=1e-5)
  assert "objectness" not in losses  # no objectness logits given
