"""NaViT packing, model side: every image of a packed batch gets the pooled features and logits it
gets when encoded alone (fp32, 1e-5), with several sizes and aspect ratios per row, dropped
tokens and an empty slot; empty slots are masked out of predictions, scores and the loss.

"Alone" is the plain path ``ViT.__call__`` on the image's own pixels (its own patch grid), except
for an image with dropped tokens, which has no plain form: it is compared with the packed path
holding that image alone.
"""

import jax
import numpy as np
import pytest
from flax import linen as nn

from palix.layers.patch import ConvPatchEmbed, DualPatchNormEmbed
from palix.layers.pooling import GlobalAveragePool, MAPHead
from palix.layers.position import FactorizedPosEmb, LearnedPosEmb, SinCosFactorizedPosEmb
from palix.models.classifier import ClassifierConfig, ClassifierModel
from palix.models.vit import ParallelBlock, ViTConfig

P, L, K, CLASSES = 4, 48, 3, 7
# (height, width) in pixels: grids 2x3, 4x2, 3x3, 1x5, 5x4 (several aspect ratios).
SIZES = [(8, 12), (16, 8), (12, 12), (4, 20), (20, 16)]
# Rows of (image index, kept token positions or None for all). Row 1 drops tokens of image 4 and
# leaves its third slot empty.
ROWS = [[(0, None), (1, None), (2, None)],
        [(3, None), (4, [0, 3, 4, 9, 10, 17, 19])]]
DROPPED = 4

CONFIGS = {
    "gap_absolute": dict(pool=GlobalAveragePool, posemb=FactorizedPosEmb),
    "map_fractional_dpn": dict(pool=MAPHead, posemb=FactorizedPosEmb, posemb_fractional=True,
                               patch_embed=DualPatchNormEmbed),
    "parallel_sincos_fractional": dict(pool=MAPHead, posemb=SinCosFactorizedPosEmb,
                                       posemb_fractional=True, block=ParallelBlock,
                                       qk_norm=True),
}


def _images():
  rng = np.random.RandomState(0)
  return [rng.uniform(-1, 1, (h, w, 3)).astype(np.float32) for h, w in SIZES]


def np_patchify(image):
  h, w, _ = image.shape
  gh, gw = h // P, w // P
  patches = image.reshape(gh, P, gw, P, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
  ys, xs = np.divmod(np.arange(gh * gw), gw)
  return patches, ys, xs, (gh, gw)


def pack(rows, images, labels):
  """A packed batch written out directly (independent of ``palix.tasks.packing``)."""
  batch = {"patches": np.zeros((len(rows), L, P * P * 3), np.float32),
           "image_ids": np.zeros((len(rows), L), np.int32),
           "ys": np.zeros((len(rows), L), np.int32), "xs": np.zeros((len(rows), L), np.int32),
           "grid_sizes": np.zeros((len(rows), K, 2), np.int32),
           "labels": np.zeros((len(rows), K), np.int32),
           "image_mask": np.zeros((len(rows), K), np.int32)}
  for r, row in enumerate(rows):
    start = 0
    for slot, (index, keep) in enumerate(row):
      patches, ys, xs, grid = np_patchify(images[index])
      keep = np.arange(len(patches)) if keep is None else np.asarray(keep)
      end = start + len(keep)
      batch["patches"][r, start:end] = patches[keep]
      batch["ys"][r, start:end], batch["xs"][r, start:end] = ys[keep], xs[keep]
      batch["image_ids"][r, start:end] = slot + 1
      batch["grid_sizes"][r, slot] = grid
      batch["labels"][r, slot] = labels[index]
      batch["image_mask"][r, slot] = 1
      start = end
  # Padding tokens hold garbage: nothing may read them.
  batch["patches"][batch["image_ids"] == 0] = 5.0
  return batch


def _model(options):
  vit = ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=P, image_size=12,
                  posemb_max_grid=8, **options)
  return ClassifierModel(ClassifierConfig(vit, num_classes=CLASSES), image_size=12)


def _random_params(model):
  shapes = nn.meta.unbox(jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0)))
  rng = np.random.RandomState(1)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(leaf.dtype)
    return 1 + 0.1 * noise if path[-1].key == "scale" else 0.3 * noise

  return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def _pooled_and_logits(module, images):
  pooled, _ = module.vit(images)
  return pooled, module.head(pooled)


def _pooled_and_logits_packed(module, *packed):
  pooled, _ = module.vit.encode_packed(*packed)
  return pooled, module.head(pooled)


def _everything(model, params, batch):
  """Pooled features, logits, loss, metrics, predictions and scores of a packed batch."""
  keys = ("patches", "image_ids", "ys", "xs", "grid_sizes")
  pooled, logits = model.module.apply({"params": params}, *(batch[k] for k in keys),
                                      method=_pooled_and_logits_packed)
  loss, metrics = model.loss_fn(params, batch, None)
  predictions, aux = model.predict_batch_with_aux(params, batch)
  return dict(pooled=pooled, logits=logits, loss=loss, metrics=metrics, predictions=predictions,
              scores=aux["scores"], scored=model.score_batch(params, batch))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def packed_and_alone(request):
  """One compiled function for the packed batch and, in the same shapes, the dropped-token image
  alone; one per image size for the plain path (a compile costs less CPU than op-by-op runs)."""
  model = _model(CONFIGS[request.param])
  params = _random_params(model)
  images = _images()
  labels = np.arange(len(images)) % CLASSES
  batch = pack(ROWS, images, labels)
  run = jax.jit(lambda p, b: _everything(model, p, b))
  plain = jax.jit(lambda p, x: model.module.apply({"params": p}, x, method=_pooled_and_logits))
  packed = run(params, batch)
  alone = {}
  for index, image in enumerate(images):
    if index == DROPPED:  # alone in row 0; row 1 empty (same shapes, same compiled function)
      single = run(params, pack([[ROWS[1][1]], []], images, labels))
      alone[index] = (single["pooled"][0, 0], single["logits"][0, 0])
    else:
      pooled, logits = plain(params, image[None])
      alone[index] = (pooled[0], logits[0])
  return model, params, batch, packed, alone, labels, run


def test_every_packed_image_equals_itself_encoded_alone(packed_and_alone):
  _, _, _, packed, alone, _, _ = packed_and_alone
  pooled, logits = packed["pooled"], packed["logits"]
  for r, row in enumerate(ROWS):
    for slot, (index, _) in enumerate(row):
      np.testing.assert_allclose(pooled[r, slot], alone[index][0], rtol=1e-5, atol=1e-5,
                                 err_msg=f"pooled features of image {index}")
      np.testing.assert_allclose(logits[r, slot], alone[index][1], rtol=1e-5, atol=1e-5,
                                 err_msg=f"logits of image {index}")
  # The comparison has teeth: images differ from each other.
  assert np.abs(np.asarray(alone[0][1] - alone[1][1])).max() > 1e-2


def test_the_empty_slot_pools_to_zeros_and_is_masked(packed_and_alone):
  _, _, _, packed, alone, labels, _ = packed_and_alone
  np.testing.assert_array_equal(packed["pooled"][1, 2], 0.0)
  assert packed["predictions"][1, 2] == -1 and packed["scores"][1, 2] == 0
  for r, row in enumerate(ROWS):
    for slot, (index, _) in enumerate(row):
      assert packed["predictions"][r, slot] == int(np.argmax(alone[index][1]))
  # Loss and accuracy: the five real images only, each as if alone.
  logp = [jax.nn.log_softmax(alone[i][1])[labels[i]] for i in range(len(SIZES))]
  assert float(packed["loss"]) == pytest.approx(-float(np.mean(logp)), rel=1e-5)
  assert float(packed["metrics"]["num_tokens"]) == len(SIZES)
  correct = [int(np.argmax(alone[i][1])) == labels[i] for i in range(len(SIZES))]
  assert float(packed["metrics"]["accuracy"]) == pytest.approx(np.mean(correct))
  assert packed["scored"][1, 2] == 0
  assert packed["scored"][0, 1] == pytest.approx(float(logp[1]), abs=1e-5)


def test_garbage_in_the_empty_slot_and_padding_changes_nothing(packed_and_alone):
  _, params, batch, packed, _, _, run = packed_and_alone
  other = {k: v.copy() for k, v in batch.items()}
  other["labels"][1, 2] = 5
  other["grid_sizes"][1, 2] = (3, 3)
  other["patches"][other["image_ids"] == 0] = -7.0
  again = run(params, other)
  assert float(again["loss"]) == float(packed["loss"])
  np.testing.assert_array_equal(again["logits"][batch["image_mask"] == 1],
                                packed["logits"][batch["image_mask"] == 1])


def test_packed_inputs_need_per_image_position_embeddings():
  model = _model(dict(pool=GlobalAveragePool, posemb=LearnedPosEmb))
  params = _random_params(model)
  batch = pack(ROWS, _images(), np.zeros(len(SIZES), np.int32))
  with pytest.raises(ValueError, match="LearnedPosEmb resizes its table to one image grid"):
    jax.eval_shape(model.loss_fn, params, batch, None)


def test_bad_packed_shapes_are_named():
  model = _model(CONFIGS["gap_absolute"])
  params = _random_params(model)
  batch = pack(ROWS, _images(), np.zeros(len(SIZES), np.int32))
  with pytest.raises(ValueError, match=r"packed batch\['labels'\] has shape \(2,\); expected "
                                       r"\[2, 3\]"):
    model.loss_fn(params, dict(batch, labels=np.zeros(2, np.int32)), None)
  with pytest.raises(ValueError, match=r"packed patches have shape \(2, 48, 12\); expected "
                                       r"\[batch, length, patch_size\^2 \* 3\] = \[2, 48, 48\]"):
    jax.eval_shape(model.loss_fn, params, dict(batch, patches=batch["patches"][..., :12]), None)
  with pytest.raises(KeyError, match="missing 'grid_sizes'"):
    model.loss_fn(params, {k: v for k, v in batch.items() if k != "grid_sizes"}, None)


def test_conv_stem_on_patches_equals_it_on_the_image():
  """``ConvPatchEmbed.embed_patches`` is the stem's own convolution, applied per patch."""
  stem = ConvPatchEmbed(width=8, patch_size=P)
  image = _images()[4][None]
  variables = jax.jit(stem.init)(jax.random.PRNGKey(0), image)
  tokens, _ = jax.jit(stem.apply)(variables, image)
  patches = np_patchify(image[0])[0][None]
  embed = jax.jit(lambda v, x: stem.apply(v, x, method=ConvPatchEmbed.embed_patches))
  np.testing.assert_allclose(embed(variables, patches), tokens, atol=1e-5)

