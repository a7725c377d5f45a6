"""The image classifier's model contract, checked against numpy: logits are the linear head of the
ViT's pooled output, the loss is the masked mean cross-entropy, predictions and scores are the
argmax and log-probabilities; padding rows change nothing; a few steps of training fit a batch."""

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from palix import config as palix_config
from palix.layers.pooling import GlobalAveragePool, MAPHead, NoPool
from palix.models.classifier import ClassifierConfig, ClassifierModel
from palix.models.vit import ViT, ViTConfig
from palix.training import train_step as train_step_lib
from palix.training.train_state import TrainState

IMG, CLASSES = 16, 5
VIT = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=IMG,
                pool=GlobalAveragePool)


def _model(pool=GlobalAveragePool, **kw):
  return ClassifierModel(ClassifierConfig(dataclasses.replace(VIT, pool=pool),
                                          num_classes=CLASSES), image_size=IMG, **kw)


def _random_params(model, seed=0):
  """Initial shapes with random values (the zero-initialised head included)."""
  shapes = nn.meta.unbox(jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0)))
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                      shapes["params"])


def _batch(size=6, seed=0):
  rng = np.random.RandomState(seed)
  return {"images": rng.uniform(-1, 1, (size, IMG, IMG, 3)).astype(np.float32),
          "labels": rng.randint(0, CLASSES, size).astype(np.int32),
          "image_mask": np.array([1] * (size - 2) + [0, 0], np.int32)}


def _np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.fixture(scope="module", params=[GlobalAveragePool, MAPHead], ids=["gap", "map"])
def setup(request):
  model = _model(request.param)
  params = _random_params(model)
  batch = _batch()
  vit = ViT(model.config.vit.resolved())
  pooled, _ = jax.jit(vit.apply)({"params": params["vit"]}, batch["images"])
  logits = np.asarray(pooled, np.float64) @ params["head"]["kernel"] + params["head"]["bias"]
  # One compiled function per method for the module: compiles dominate on a 2-core machine.
  fns = {name: jax.jit(getattr(model, name))
         for name in ("loss_fn", "predict_batch_with_aux", "score_batch")}
  return fns, params, batch, logits


def test_logits_are_the_linear_head_of_the_pooled_vit_output(setup):
  fns, params, batch, logits = setup
  _, aux = fns["predict_batch_with_aux"](params, batch)
  np.testing.assert_allclose(aux["logits"], logits, rtol=1e-5, atol=1e-5)


def test_loss_and_metrics_are_the_masked_mean_cross_entropy(setup):
  fns, params, batch, logits = setup
  loss, metrics = fns["loss_fn"](params, batch, None)
  real = batch["image_mask"] == 1
  logp = _np_log_softmax(logits)[np.arange(len(logits)), batch["labels"]]
  assert float(loss) == pytest.approx(-logp[real].mean(), rel=1e-5)
  expected_accuracy = (logits.argmax(-1) == batch["labels"])[real].mean()
  assert float(metrics["accuracy"]) == pytest.approx(expected_accuracy)
  assert float(metrics["num_examples"]) == float(metrics["num_tokens"]) == real.sum()


def test_padding_rows_change_nothing(setup):
  fns, params, batch, _ = setup
  other = dict(batch, images=batch["images"].copy(), labels=batch["labels"].copy())
  other["images"][-2:] = 0.7
  other["labels"][-2:] = (other["labels"][-2:] + 1) % CLASSES
  first, second = (fns["loss_fn"](params, b, None) for b in (batch, other))
  assert float(first[0]) == float(second[0])
  assert float(first[1]["accuracy"]) == float(second[1]["accuracy"])


def test_predictions_scores_and_score_batch(setup):
  fns, params, batch, logits = setup
  predictions, aux = fns["predict_batch_with_aux"](params, batch)
  logp = _np_log_softmax(logits)
  np.testing.assert_array_equal(predictions, logits.argmax(-1))
  np.testing.assert_allclose(aux["logprobs"], logp, atol=1e-5)
  np.testing.assert_allclose(aux["scores"], logp.max(-1), atol=1e-5)
  scored = fns["score_batch"](params, batch)
  expected = logp[np.arange(len(logp)), batch["labels"]] * batch["image_mask"]
  np.testing.assert_allclose(scored, expected, atol=1e-5)


def test_the_data_layers_one_slot_layout_gives_the_same_logits(setup):
  fns, params, batch, _ = setup
  five_d = dict(batch, images=batch["images"][:, None])
  np.testing.assert_array_equal(fns["predict_batch_with_aux"](params, five_d)[1]["logits"],
                                fns["predict_batch_with_aux"](params, batch)[1]["logits"])


def test_label_smoothing_follows_t5x():
  model = _model(label_smoothing=0.1)
  rng = np.random.RandomState(0)
  logits, labels = rng.normal(size=(6, CLASSES)), rng.randint(0, CLASSES, 6)
  loss, _ = model.loss_and_metrics(jnp.asarray(logits, jnp.float32), labels, jnp.ones(6))
  low = 0.1 / (CLASSES - 1)
  target = np.full(logits.shape, low)
  target[np.arange(6), labels] = 0.9
  entropy = -(0.9 * np.log(0.9) + (CLASSES - 1) * low * np.log(low))
  expected = (-(target * _np_log_softmax(logits)).sum(-1) - entropy).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_bad_configs_and_batches_are_named():
  with pytest.raises(ValueError, match="one vector per image.*GlobalAveragePool or %vit.MAPHead"):
    _model(NoPool)
  model = _model()
  params = _random_params(model)
  with pytest.raises(ValueError, match=r"batch\['labels'\] has shape \(3,\); expected \[6\]"):
    model.loss_fn(params, dict(_batch(), labels=np.zeros(3, np.int32)), None)
  with pytest.raises(ValueError, match=r"batch\['images'\] has shape \(6, 16, 16\)"):
    model.loss_fn(params, dict(_batch(), images=np.zeros((6, 16, 16), np.float32)), None)
  with pytest.raises(KeyError, match="missing 'labels'"):
    model.loss_fn(params, {"images": _batch()["images"]}, None)


def test_a_few_training_steps_fit_a_batch():
  """Each class is a brightness level (plus noise): 40 Adam steps of the palix train step take
  the loss from ln(5) (zero head) to a fraction of it, and every image is then classified."""
  model = _model()
  rng = np.random.RandomState(1)
  labels = np.arange(20) % CLASSES
  images = (-0.8 + 0.4 * labels[:, None, None, None]
            + rng.normal(0, 0.05, (20, IMG, IMG, 3))).astype(np.float32)
  batch = {"images": images, "labels": labels.astype(np.int32)}
  params = nn.meta.unbox(jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0)))["params"]
  tx = optax.adam(1e-2)
  frozen = jax.tree.map(lambda _: False, params)
  step = train_step_lib.make_train_step(model, tx, lambda s: 1e-2, frozen)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(0)))

  step = jax.jit(step)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert float(losses[0]) == pytest.approx(np.log(CLASSES), rel=1e-5)
  assert float(losses[-1]) < 0.2 * np.log(CLASSES)
  predictions, _ = jax.jit(model.predict_batch_with_aux)(state.params, batch)
  np.testing.assert_array_equal(predictions, labels)


@pytest.mark.parametrize("gin_file, classes", [("classifier_tiny.gin", 10),
                                               ("classifier_b16.gin", 1000)])
def test_gin_files_build_the_classifier(gin_file, classes):
  gin.clear_config()
  try:
    palix_config.parse_gin([f"models/classifier/{gin_file}"], [], finalize=False)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(model, ClassifierModel) and model.num_classes == classes
  assert model.config.vit.resolved().pool in (GlobalAveragePool, MAPHead)
