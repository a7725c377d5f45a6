"""Soft MoE in the ViT: placement in the last blocks, both block kinds against their formulas,
scan == unrolled (two stacks), padding, diagnostics through the model, bad configs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from palix.layers.attention import MultiHeadAttention
from palix.layers.pooling import GlobalAveragePool
from palix.layers.position import FactorizedPosEmb
from palix.layers.soft_moe import MOE_METRICS, SoftMoe, SoftMoeConfig, collect_metrics
from palix.models.vit import Encoder, ParallelBlock, SequentialBlock, ViT, ViTConfig
from test_vit import np_layernorm, np_parallel_block

MOE = SoftMoeConfig(num_experts=3, slots_per_expert=2, last_n_layers=1)


def config(tiny_vit, **kw):
  return ViTConfig(**{**tiny_vit, "moe": MOE, **kw}).resolved()


def to_scan(params, depth, dense):
  """Unrolled ``block00..`` -> ``blocks`` (the dense stack) and ``moe_blocks`` (the MoE stack)."""
  t = dict(params["Transformer"])
  blocks = [t.pop(f"block{i:02d}") for i in range(depth)]
  stack = lambda bs: {"block": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *bs)}
  if dense:
    t["blocks"] = stack(blocks[:dense])
  if depth > dense:
    t["moe_blocks"] = stack(blocks[dense:])
  return {**params, "Transformer": t}


@functools.partial(jax.jit, static_argnums=0)
def forward_with_metrics(cfg, params, images):
  (_, out), state = ViT(cfg).apply({"params": params}, images, mutable=MOE_METRICS)
  return out, collect_metrics(state)


def test_moe_replaces_the_mlp_of_the_last_blocks_only(tiny_vit, vit_images):
  c = config(tiny_vit, depth=3, moe=dataclasses.replace(MOE, last_n_layers=2))
  shapes = jax.eval_shape(ViT(c).init, jax.random.PRNGKey(0), vit_images(32))["params"]
  flat = {"/".join(k[1:]): v.value.shape
          for k, v in traverse_util.flatten_dict(shapes).items() if k[0] == "Transformer"}
  assert "block00/mlp/wi/kernel" in flat and not any(k.startswith("block00/moe") for k in flat)
  for block in ("block01", "block02"):
    assert not any(k.startswith(f"{block}/mlp") for k in flat)
    assert flat[f"{block}/moe/wi/kernel"] == (3, 32, 64)  # experts of the dense MLP's width
    assert flat[f"{block}/moe/wo/kernel"] == (3, 64, 32)
    assert flat[f"{block}/moe/mu"] == (32, 3, 2) and flat[f"{block}/moe/scale"] == ()


@pytest.mark.parametrize("block, last_n", [(SequentialBlock, 1), (ParallelBlock, 2)])
def test_scan_matches_unrolled(tiny_vit, vit_images, vit_init, block, last_n):
  base = config(tiny_vit, block=block, qk_norm=True,
                moe=dataclasses.replace(MOE, last_n_layers=last_n))
  images = vit_images(32)
  params = vit_init(ViT(base), images)
  ref, ref_metrics = forward_with_metrics(base, params, images)
  scanned = dataclasses.replace(base, scan=True, remat=True)
  out, metrics = forward_with_metrics(scanned, to_scan(params, base.depth, 2 - last_n), images)
  for name in ("block00", "block01", "encoded"):
    np.testing.assert_allclose(out[name], ref[name], atol=2e-5, err_msg=name)
  assert ref_metrics.keys() == metrics.keys() and "moe/dispatch_max/layer0" in metrics
  assert ("moe/dispatch_max/layer1" in metrics) == (last_n == 2)
  for name, value in ref_metrics.items():
    np.testing.assert_allclose(metrics[name], value, atol=1e-5, err_msg=name)


def test_sequential_moe_block_formula(tiny_vit, vit_init):
  """``x1 = x + Attn(LN1 x); x1 + SoftMoe(LN2 x1)``, composed from the block's own parameters."""
  c = config(tiny_vit)
  x = np.random.RandomState(3).standard_normal((2, 6, 32)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
  mask = jnp.asarray((segment_ids[:, :, None] == segment_ids[:, None, :])
                     & (segment_ids[:, None, :] > 0))[:, None]
  block = SequentialBlock(config=c, use_moe=True)
  params = vit_init(block, x, mask)  # slots_per_expert is set, so shapes do not need the ids
  got = np.asarray(jax.jit(lambda p: block.apply({"params": p}, x, mask,
                                                 segment_ids=segment_ids))(params))
  attention = jax.jit(lambda p, y: MultiHeadAttention(num_heads=c.num_heads).apply(
      {"params": p}, y, mask=mask))
  moe = jax.jit(lambda p, y: SoftMoe(MOE, c.mlp_dim).apply({"params": p}, y, segment_ids))
  y = np_layernorm(x, params["norm1"]["scale"], params["norm1"]["bias"])
  x1 = x + np.asarray(attention(params["attention"], y))
  y = np_layernorm(x1, params["norm2"]["scale"], params["norm2"]["bias"])
  want = x1 + np.asarray(moe(params["moe"], y))
  real = segment_ids > 0
  np.testing.assert_allclose(got[real], want[real], atol=1e-4)


def test_parallel_moe_block_formula(tiny_vit, vit_init):
  """``y = LN(x); x + W_out Attn(y) + b_out + SoftMoe(y)``: the dense formula (numpy) without its
  MLP branch, plus the Soft MoE of the normalised input."""
  c = config(tiny_vit, block=ParallelBlock, qk_norm=True, qkv_bias=False, norm_bias=False)
  x = np.random.RandomState(4).standard_normal((2, 6, 32)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 2, 2, 2, 0]])
  mask = jnp.asarray((segment_ids[:, :, None] == segment_ids[:, None, :])
                     & (segment_ids[:, None, :] > 0))[:, None]
  moe = dataclasses.replace(MOE, max_images_per_row=2)
  c = dataclasses.replace(c, moe=moe)
  block = ParallelBlock(config=c, use_moe=True)
  params = vit_init(block, x, mask)
  assert "mlp_in_bias" not in params and params["fused_in"]["kernel"].shape == (32, 96)
  assert params["fused_out"]["kernel"].shape == (32, 32)
  got = np.asarray(jax.jit(lambda p: block.apply({"params": p}, x, mask,
                                                 segment_ids=segment_ids))(params))
  # The dense formula with a one-unit MLP branch whose weights are zero: attention only.
  attention_params = {
      **params, "mlp_in_bias": np.zeros(1),
      "fused_in": {"kernel": np.concatenate([params["fused_in"]["kernel"], np.zeros((32, 1))], 1)},
      "fused_out": {"kernel": np.concatenate([params["fused_out"]["kernel"], np.zeros((1, 32))]),
                    "bias": params["fused_out"]["bias"]}}
  attention_only = np_parallel_block(attention_params, x, segment_ids, c.num_heads)
  y = np_layernorm(x, params["norm"]["scale"])
  moe_out = jax.jit(lambda p, y: SoftMoe(moe, c.mlp_dim).apply({"params": p}, y, segment_ids))(
      params["moe"], y)
  real = segment_ids > 0
  np.testing.assert_allclose(got[real], (attention_only + np.asarray(moe_out))[real], atol=1e-4)


def test_padding_does_not_change_real_tokens(tiny_vit, vit_init):
  """The encoder hands its segment ids to the MoE blocks (the parallel block's formula test above
  covers its padding and packed rows)."""
  c = config(tiny_vit, moe=dataclasses.replace(MOE, last_n_layers=2))
  rng = np.random.RandomState(5)
  real = rng.standard_normal((2, 5, 32)).astype(np.float32)
  segment_ids = np.array([[1] * 5 + [0] * 3] * 2)
  encoder = Encoder(c)
  params = vit_init(encoder, jnp.zeros((2, 8, 32)), segment_ids)
  apply = jax.jit(encoder.apply)
  garbage = 100 * rng.standard_normal((2, 3, 32)).astype(np.float32)
  padded, _ = apply({"params": params}, np.concatenate([real, garbage], 1), segment_ids)
  unpadded, _ = apply({"params": params}, real, np.ones((2, 5), np.int32))
  assert np.isfinite(np.asarray(padded)).all()
  np.testing.assert_allclose(np.asarray(padded)[:, :5], unpadded, atol=1e-5)


def test_training_mode_uses_noise_and_dropout_rngs(tiny_vit, vit_images, vit_init):
  c = config(tiny_vit, depth=1, moe=dataclasses.replace(MOE, noise_std=1.0))
  images = vit_images(32)
  params = vit_init(ViT(c), images)
  run = jax.jit(lambda p, r, train: ViT(c).apply({"params": p}, images, train=train,
                                                 rngs={"dropout": r})[0], static_argnums=2)
  eval_out = run(params, jax.random.PRNGKey(0), False)
  a, b = run(params, jax.random.PRNGKey(0), True), run(params, jax.random.PRNGKey(1), True)
  assert not np.allclose(a, b, atol=1e-4) and not np.allclose(a, eval_out, atol=1e-4)


@pytest.mark.parametrize("moe, message", [
    (SoftMoeConfig(num_experts=4, last_n_layers=3), r"SoftMoeConfig.last_n_layers = 3: the MoE "
     r"layers must lie within the ViT's 2 blocks"),
    (SoftMoeConfig(num_experts=-1), r"SoftMoeConfig.num_experts = -1"),
    (SoftMoeConfig(num_experts=4, slots_per_expert=0), r"SoftMoeConfig.slots_per_expert = 0"),
    (SoftMoeConfig(num_experts=4, group_size=6), r"SoftMoeConfig.group_size = 6: does not divide "
     r"the 16 tokens of an image"),
])
def test_bad_moe_config_names_the_binding(tiny_vit, moe, message):
  with pytest.raises(ValueError, match=message):
    ViTConfig(**{**tiny_vit, "moe": moe}).resolved()


# ---- through the classifier: packed images and diagnostics in the metrics ------------------


def _packed_classifier(max_images_per_row):
  from palix.models.classifier import ClassifierConfig, ClassifierModel
  from test_navit_packed import P
  moe = SoftMoeConfig(num_experts=3, slots_per_expert=2, max_images_per_row=max_images_per_row)
  vit = ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=P, image_size=12,
                  posemb_max_grid=8, pool=GlobalAveragePool, posemb=FactorizedPosEmb, moe=moe)
  return ClassifierModel(ClassifierConfig(vit, num_classes=7), image_size=12)


def test_packed_images_route_separately_and_report_metrics():
  """Three images packed in one row (with padding) pool to what each gives alone, so the MoE
  routed each within itself; the classifier's loss_fn returns the routing diagnostics. (Rows with
  more images than ``max_images_per_row``: tests/layers/test_soft_moe.py.)"""
  from test_navit_packed import K, ROWS, _images, _pooled_and_logits, _random_params, pack
  model = _packed_classifier(max_images_per_row=K)
  params = _random_params(model)
  images = _images()
  batch = pack(ROWS[:1], images, np.arange(len(images)) % 7)
  keys = ("patches", "image_ids", "ys", "xs", "grid_sizes")

  def encode_packed(module, *inputs):
    return module.vit.encode_packed(*inputs)[0]

  @jax.jit
  def pooled_and_metrics(p):  # one compiled function for both
    pooled = model.module.apply({"params": p}, *(batch[k] for k in keys), method=encode_packed)
    return pooled, model.loss_fn(p, batch, None)[1]

  pooled, metrics = pooled_and_metrics(params)
  plain = jax.jit(lambda p, x: model.module.apply({"params": p}, x,
                                                  method=_pooled_and_logits)[0])
  for slot, (index, _) in enumerate(ROWS[0]):
    np.testing.assert_allclose(pooled[0, slot], plain(params, images[index][None])[0],
                               atol=1e-5, err_msg=f"image {index}")
  assert {"moe/dispatch_max", "moe/combine_min", "moe/similarity_mean", "moe/scale",
          "moe/dispatch_max/layer0", "moe/unrouted_tokens"} <= set(metrics)
  assert metrics["moe/unrouted_tokens"] == 0
  np.testing.assert_allclose(metrics["moe/scale"],
                             params["vit"]["Transformer"]["block00"]["moe"]["scale"], rtol=1e-6)


def test_dense_classifier_reports_no_moe_metrics():
  from test_navit_packed import _random_params
  model = _packed_classifier(max_images_per_row=1)
  dense = type(model)(dataclasses.replace(model.config, vit=dataclasses.replace(
      model.config.vit, moe=None)), image_size=12)
  params = _random_params(dense)
  batch = {"images": np.zeros((2, 12, 12, 3), np.float32), "labels": np.array([0, 1])}
  _, metrics = jax.jit(dense.loss_fn)(params, batch, None)
  assert metrics and not any(k.startswith("moe/") for k in metrics)
