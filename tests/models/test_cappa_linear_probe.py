"""The ridge linear probe (eval/linear_probe.py) and CapPa's pooled features feeding it."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from palix.eval import linear_probe


def _clusters(n_per_class, num_classes=5, dim=32, spread=0.5, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 3, (num_classes, dim))
  labels = np.repeat(np.arange(num_classes), n_per_class)
  features = centres[labels] + rng.normal(0, spread, (len(labels), dim))
  order = rng.permutation(len(labels))
  return features[order], labels[order]


def test_separable_clusters_are_classified_perfectly():
  x_all, y_all = _clusters(50, seed=1)  # one draw: train and test share the class centres
  x_train, y_train, x_test, y_test = x_all[:100], y_all[:100], x_all[100:], y_all[100:]
  metrics = linear_probe.evaluate(x_train, y_train, x_test, y_test)
  assert metrics["linear_probe_accuracy"] == 1.0
  assert metrics["linear_probe_l2"] in linear_probe.DEFAULT_L2_GRID


def test_random_labels_stay_at_chance():
  x, _ = _clusters(200, num_classes=4, seed=2)
  y = np.random.default_rng(3).integers(0, 4, len(x))
  metrics = linear_probe.evaluate(x[:400], y[:400], x[400:], y[400:], l2=1.0)
  assert abs(metrics["linear_probe_accuracy"] - 0.25) < 0.1


@pytest.mark.parametrize("n", [12, 80])  # dual (n < d) and primal (n > d) solves
def test_solution_satisfies_the_ridge_normal_equations(n):
  x, y = _clusters(n // 4, num_classes=4, dim=40, spread=2.0, seed=4)
  probe = linear_probe.fit(x, y, 4, l2=0.7)
  z = (x - x.mean(0)) / x.std(0)
  targets = 2.0 * np.eye(4)[y] - 1.0
  residual = z @ probe.weights + probe.bias - targets
  # Gradient of ||Z W + b - T||^2 + l2 ||W||^2 vanishes in W and in b.
  np.testing.assert_allclose(z.T @ residual + 0.7 * probe.weights, 0, atol=1e-8)
  np.testing.assert_allclose(residual.sum(0), 0, atol=1e-8)


def test_bad_inputs_are_reported():
  x, y = _clusters(5, num_classes=2, dim=4)
  with pytest.raises(ValueError, match="one per feature row"):
    linear_probe.fit(x, y[:-1])
  with pytest.raises(ValueError, match=r"in \[0, 2\)"):
    linear_probe.fit(x, y + 1, num_classes=2)
  with pytest.raises(ValueError, match="dimensions"):
    linear_probe.fit(x, y).scores(x[:, :3])
  with pytest.raises(ValueError, match="NaN"):
    linear_probe.fit(np.full_like(x, np.nan), y)


def test_cappa_pooled_features_separate_bright_from_dark_images():
  from palix.models.cappa import CapPaConfig, CapPaModel
  from palix.models.vit import ViTConfig

  vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=16)
  model = CapPaModel(CapPaConfig(vit=vit, vocab_size=8, max_len=4, decoder_depth=1),
                     image_size=16, max_target_len=4)
  params = nn.meta.unbox(jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0))["params"])
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 64)
  images = (np.where(labels, 0.5, -0.5)[:, None, None, None]
            + rng.normal(0, 0.3, (64, 16, 16, 3))).astype(np.float32)
  features = linear_probe.extract_features(lambda x: model.encode_pooled(params, x), images,
                                           batch_size=32)
  assert features.shape == (64, 32)
  # GAP of the encoder tokens, the same numbers for a 5-D [B, 1, H, W, 3] batch.
  np.testing.assert_allclose(np.asarray(model.encode_pooled(params, images[:4, None])),
                             features[:4], rtol=1e-5, atol=1e-6)
  metrics = linear_probe.evaluate(features[:48], labels[:48], features[48:], labels[48:])
  assert metrics["linear_probe_accuracy"] >= 0.9
