"""The image classifier with an AdaTape ViT: the loss adds the weighted ponder cost of the real
images, the metrics carry the tape tokens used, packed batches are refused."""

import gin
import jax
import numpy as np
import pytest
from flax import linen as nn

from palix import config as palix_config
from palix.models.classifier import ClassifierModel, ImageClassifier


@pytest.fixture(scope="module")
def tape_classifier():
  gin.clear_config()
  try:
    palix_config.parse_gin(["models/classifier/classifier_adatape_tiny.gin"],
                           ["ViTConfig.depth = 1", "AdaTapeConfig.ponder_loss_weight = 0.5"],
                           finalize=False)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  shapes = jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0))["params"]
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda x: 0.3 * rng.standard_normal(x.shape).astype(x.dtype),
                        nn.meta.unbox(shapes))
  return model, params


def test_loss_adds_weighted_ponder_cost_of_real_images(tape_classifier):
  model, params = tape_classifier
  assert isinstance(model, ClassifierModel) and model.config.vit.adatape.max_tape_tokens == 10
  rng = np.random.RandomState(1)
  batch = {"images": rng.uniform(-1, 1, (4, 28, 28, 3)).astype(np.float32),
           "labels": np.array([0, 3, 7, 9], np.int32),
           "image_mask": np.array([1, 1, 1, 0], np.int32)}

  @jax.jit
  def run(p, b):
    out = model.module.apply({"params": p}, b["images"], method=ImageClassifier.logits_and_out)
    return out, model.loss_fn(p, b, None)

  (logits, out), (loss, metrics) = run(params, batch)
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -logp[np.arange(3), batch["labels"][:3]].mean()
  ponder = np.asarray(out["ponder_cost"])[:3].mean()
  used = np.asarray(out["tape_tokens_used"])[:3]
  assert float(loss) == pytest.approx(ce + 0.5 * ponder, abs=1e-5)
  assert float(metrics["cross_entropy"]) == pytest.approx(ce, abs=1e-5)
  assert float(metrics["tape_tokens_mean"]) == pytest.approx(used.mean())
  assert float(metrics["tape_tokens_max"]) == used.max()
  assert 2 <= used.min() and used.max() <= 10
  assert out["encoded"].shape == (4, 49 + 10, 64)
  with pytest.raises(ValueError, match="ViTConfig.adatape does not support packed batches"):
    model.loss_fn(params, {"patches": 0, "image_ids": 0, "ys": 0, "xs": 0,
                           "grid_sizes": np.zeros((4, 1, 2)), "labels": np.zeros((4, 1)),
                           "image_mask": np.zeros((4, 1))}, None)
