"""ViT behaviour: shapes, scan/remat equivalence, the parallel block formula, option param trees,
padding invariance, bf16 compute and bad input. Independent references are written in numpy."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from palix.layers.patch import DualPatchNormEmbed
from palix.layers.pooling import GlobalAveragePool, MAPHead
from palix.layers.position import FactorizedPosEmb, LearnedPosEmb, SinCos2DPosEmb
from palix.models.vit import Encoder, ParallelBlock, SequentialBlock, ViT, ViTConfig

_erf = np.vectorize(math.erf)


def np_layernorm(x, scale, bias=None, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  y = (x - mean) / np.sqrt(var + eps) * scale
  return y if bias is None else y + bias


def np_attention(q, k, v, mask):
  """``[B, L, H, hd]`` softmax attention; ``mask`` is bool ``[B, L, L]``."""
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None], logits, -1e30)  # fully masked (padding) rows stay finite
  logits = logits - logits.max(-1, keepdims=True)
  w = np.exp(logits)
  w = w / w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def np_parallel_block(p, x, segment_ids, heads, eps=1e-6):
  """``y = LN(x); x + W_out [attn(qknorm(q), qknorm(k), v); gelu(u + b)] + b_out`` in float64."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  b, n, d = x.shape
  hd = d // heads
  y = np_layernorm(x, p["norm"]["scale"], p["norm"].get("bias"), eps)
  q, k, v, u = np.split(y @ p["fused_in"]["kernel"], [d, 2 * d, 3 * d], axis=-1)
  if "qkv_bias" in p:
    qb, kb, vb = np.split(p["qkv_bias"], 3)
    q, k, v = q + qb, k + kb, v + vb
  u = u + p["mlp_in_bias"]
  q, k, v = (t.reshape(b, n, heads, hd) for t in (q, k, v))
  if "query_norm" in p:
    q = np_layernorm(q, p["query_norm"]["scale"], p["query_norm"].get("bias"), eps)
    k = np_layernorm(k, p["key_norm"]["scale"], p["key_norm"].get("bias"), eps)
  mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
  a = np_attention(q, k, v, mask).reshape(b, n, d)
  gelu_u = 0.5 * u * (1 + _erf(u / np.sqrt(2)))
  return x + np.concatenate([a, gelu_u], -1) @ p["fused_out"]["kernel"] + p["fused_out"]["bias"]


def config(tiny_vit, **kw):
  return ViTConfig(**{**tiny_vit, **kw}).resolved()


def to_scan(params, depth):
  """Unrolled ``block00..`` params -> the scanned layout (leading ``layers`` axis)."""
  t = dict(params["Transformer"])
  blocks = [t.pop(f"block{i:02d}") for i in range(depth)]
  t["blocks"] = {"block": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *blocks)}
  return {**params, "Transformer": t}


# ---- shapes and position embeddings at two resolutions -------------------------------------


@pytest.mark.parametrize("posemb", [LearnedPosEmb, SinCos2DPosEmb, FactorizedPosEmb])
def test_shapes_at_two_resolutions(tiny_vit, vit_images, vit_init, vit_forward, posemb):
  c = config(tiny_vit, posemb=posemb, depth=1)
  params = vit_init(ViT(c), vit_images(32))
  for size, grid in ((32, 4), (48, 6)):
    tokens, out = vit_forward(c, params, vit_images(size))
    assert tokens.shape == (2, grid * grid, 32)
    assert out["encoded"].shape == (2, grid * grid, 32)
    assert set(out) == {"stem", "with_posemb", "block00", "encoded", "pre_logits"}
    added = np.asarray(out["with_posemb"] - out["stem"])[0]  # what the position embedding added
    if posemb is LearnedPosEmb:  # stored for 4x4, bilinearly resized (half-pixel centres) to 6x6
      table = np.asarray(params["posemb"]["pos_embedding"]).reshape(4, 4, 32)
      centres = np.clip((np.arange(grid) + 0.5) * 4 / grid - 0.5, 0, 3)
      lo = np.floor(centres).astype(int)
      hi, frac = np.minimum(lo + 1, 3), centres - lo
      rows = table[lo] * (1 - frac)[:, None, None] + table[hi] * frac[:, None, None]
      want = rows[:, lo] * (1 - frac)[None, :, None] + rows[:, hi] * frac[None, :, None]
    elif posemb is SinCos2DPosEmb:
      omega = 1 / 10000 ** (np.arange(8) / 7)
      ys, xs = np.divmod(np.arange(grid * grid), grid)
      want = np.concatenate([np.sin(xs[:, None] * omega), np.cos(xs[:, None] * omega),
                             np.sin(ys[:, None] * omega), np.cos(ys[:, None] * omega)], 1)
    else:
      ys, xs = np.divmod(np.arange(grid * grid), grid)
      want = (np.asarray(params["posemb"]["pos_embedding_y"])[ys]
              + np.asarray(params["posemb"]["pos_embedding_x"])[xs])
    np.testing.assert_allclose(added, want.reshape(grid * grid, 32), atol=1e-5)


def test_class_token_and_pooled_shapes(tiny_vit, vit_images, vit_init, vit_forward):
  c = config(tiny_vit, class_token=True, pool=GlobalAveragePool, depth=1)
  params = vit_init(ViT(c), vit_images(32))
  pooled, out = vit_forward(c, params, vit_images(48))
  assert out["encoded"].shape == (2, 1 + 36, 32) and pooled.shape == (2, 32)
  np.testing.assert_allclose(pooled, np.asarray(out["encoded"]).mean(1), atol=1e-5)
  cls = np.asarray(out["with_posemb"])[:, 0]
  want = np.asarray(params["cls"])[0, 0] + np.asarray(params["cls_posemb"])
  np.testing.assert_allclose(cls, np.broadcast_to(want, cls.shape), atol=1e-6)


# ---- scan, remat ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", [SequentialBlock, ParallelBlock])
def test_scan_matches_unrolled(tiny_vit, vit_images, vit_init, vit_forward, block):
  base = config(tiny_vit, block=block, qk_norm=True)
  images = vit_images(32)
  params = vit_init(ViT(base), images)
  _, ref = vit_forward(base, params, images)
  scanned = dataclasses.replace(base, scan=True, remat=True)
  _, out = vit_forward(scanned, to_scan(params, base.depth), images)
  for name in ("block00", "block01", "encoded"):
    np.testing.assert_allclose(out[name], ref[name], atol=2e-5, err_msg=name)


def test_remat_matches_plain(tiny_vit, vit_images, vit_init, vit_forward):
  """Remat must not change outputs, and (what it actually touches) gradients."""
  base = config(tiny_vit, block=ParallelBlock, qk_norm=True)
  images = vit_images(32)
  params = vit_init(ViT(base), images)
  _, ref = vit_forward(base, params, images)
  _, out = vit_forward(dataclasses.replace(base, remat=True), params, images)
  np.testing.assert_allclose(out["encoded"], ref["encoded"], atol=1e-6)

  tokens = np.asarray(ref["with_posemb"])
  segment_ids = np.ones(tokens.shape[:2], np.int32)
  one_layer = dataclasses.replace(base, depth=1)  # remat wraps each block; one is enough here
  encoder_params = {k: v for k, v in params["Transformer"].items() if k != "block01"}

  def grads(cfg):
    loss = lambda p: jnp.sum(Encoder(cfg).apply({"params": p}, tokens, segment_ids)[0] ** 2)
    return jax.jit(jax.grad(loss))(encoder_params)

  plain, remat = grads(one_layer), grads(dataclasses.replace(one_layer, remat=True))
  assert np.abs(np.asarray(plain["block00"]["fused_in"]["kernel"])).max() > 0
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         remat, plain)


@pytest.mark.slow
def test_scan_remat_gradients_match_unrolled(tiny_vit, vit_images, vit_init):
  """ViT-22B's setup (scan + remat) against the plain unrolled model, through the whole ViT."""
  base = config(tiny_vit, block=ParallelBlock, qk_norm=True)
  images = vit_images(32)
  params = vit_init(ViT(base), images)

  def grads(cfg, p):
    loss = lambda p: jnp.sum(ViT(cfg).apply({"params": p}, images)[1]["encoded"] ** 2)
    return jax.jit(jax.grad(loss))(p)

  ref = to_scan(grads(base, params), base.depth)
  got = grads(dataclasses.replace(base, scan=True, remat=True), to_scan(params, base.depth))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         got, ref)


# ---- the parallel block against its formula ------------------------------------------------


@pytest.mark.parametrize("options", [dict(qk_norm=True, qkv_bias=False, norm_bias=False),
                                     dict(qk_norm=False, qkv_bias=True, norm_bias=True),
                                     dict(qk_norm=True, qkv_bias=True, norm_bias=True)])
def test_parallel_block_matches_formula(tiny_vit, vit_init, options):
  c = config(tiny_vit, block=ParallelBlock, **options)
  x = np.random.RandomState(3).standard_normal((2, 6, 32)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 2, 2, 2, 0]])  # padding and two packed items
  mask = jnp.asarray((segment_ids[:, :, None] == segment_ids[:, None, :])
                     & (segment_ids[:, None, :] > 0))[:, None]
  block = ParallelBlock(config=c)
  params = vit_init(block, x, mask)
  got = np.asarray(jax.jit(block.apply)({"params": params}, x, mask))
  want = np_parallel_block(params, x, segment_ids, c.num_heads)
  real = segment_ids > 0
  np.testing.assert_allclose(got[real], want[real], atol=1e-4)


# ---- options change the parameter tree exactly ---------------------------------------------


def _block_keys(tiny_vit, vit_images, **kw):
  model = ViT(config(tiny_vit, **kw))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), vit_images(32))
  params = traverse_util.flatten_dict(variables["params"])
  block = {"/".join(k[2:]) for k in params if k[:2] == ("Transformer", "block00")}
  return block, {"/".join(k) for k in params}


def test_sequential_options_param_tree(tiny_vit, vit_images):
  proj = {f"attention/{n}/{w}" for n in ("query", "key", "value", "out")
          for w in ("kernel", "bias")}
  mlp = {f"mlp/{n}/{w}" for n in ("wi", "wo") for w in ("kernel", "bias")}
  norms = {f"{n}/{w}" for n in ("norm1", "norm2") for w in ("scale", "bias")}
  default, _ = _block_keys(tiny_vit, vit_images)
  assert default == proj | mlp | norms
  qk, _ = _block_keys(tiny_vit, vit_images, qk_norm=True)
  assert qk - default == {f"attention/{n}/{w}" for n in ("query_norm", "key_norm")
                          for w in ("scale", "bias")}
  assert not default - qk
  no_qkv_bias, _ = _block_keys(tiny_vit, vit_images, qkv_bias=False)  # out projection too
  assert default - no_qkv_bias == {f"attention/{n}/bias" for n in ("query", "key", "value", "out")}
  no_norm_bias, everything = _block_keys(tiny_vit, vit_images, qk_norm=True, norm_bias=False)
  assert qk - no_norm_bias == {"norm1/bias", "norm2/bias", "attention/query_norm/bias",
                               "attention/key_norm/bias"}
  assert "Transformer/encoder_norm/bias" not in everything
  no_mlp_bias, _ = _block_keys(tiny_vit, vit_images, mlp_bias=False)
  assert default - no_mlp_bias == {"mlp/wi/bias", "mlp/wo/bias"}


def test_parallel_options_param_tree(tiny_vit, vit_images):
  vit22b, _ = _block_keys(tiny_vit, vit_images, block=ParallelBlock, qk_norm=True,
                          qkv_bias=False, norm_bias=False)
  assert vit22b == {"norm/scale", "fused_in/kernel", "mlp_in_bias", "query_norm/scale",
                    "key_norm/scale", "fused_out/kernel", "fused_out/bias"}
  full, _ = _block_keys(tiny_vit, vit_images, block=ParallelBlock, qk_norm=True)
  assert full - vit22b == {"norm/bias", "qkv_bias", "query_norm/bias", "key_norm/bias"}
  no_qk, _ = _block_keys(tiny_vit, vit_images, block=ParallelBlock, qk_norm=False,
                         qkv_bias=False, norm_bias=False, mlp_bias=False)
  assert no_qk == {"norm/scale", "fused_in/kernel", "fused_out/kernel"}


def test_dual_patchnorm_follows_norm_bias(tiny_vit, vit_images):
  _, dpn = _block_keys(tiny_vit, vit_images, patch_embed=DualPatchNormEmbed)
  assert {k for k in dpn if k.startswith("embedding/")} == {
      "embedding/patchln_pre/scale", "embedding/patchln_pre/bias", "embedding/embedding/kernel",
      "embedding/embedding/bias", "embedding/patchln_post/scale", "embedding/patchln_post/bias"}
  _, dpn_nobias = _block_keys(tiny_vit, vit_images, patch_embed=DualPatchNormEmbed,
                              norm_bias=False)
  assert {k for k in dpn_nobias if k.startswith("embedding/")} == {
      "embedding/patchln_pre/scale", "embedding/embedding/kernel", "embedding/embedding/bias",
      "embedding/patchln_post/scale"}


# ---- padding -------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [SequentialBlock, ParallelBlock])
def test_padding_does_not_change_real_tokens(tiny_vit, vit_init, block):
  c = config(tiny_vit, block=block, qk_norm=True)
  rng = np.random.RandomState(5)
  real = rng.standard_normal((2, 5, 32)).astype(np.float32)
  segment_ids = np.array([[1] * 5 + [0] * 3] * 2)
  encoder = Encoder(c)
  params = vit_init(encoder, jnp.zeros((2, 8, 32)), segment_ids)
  apply = jax.jit(encoder.apply)
  outputs = []
  for seed in (0, 1):  # two different garbage paddings
    garbage = 100 * np.random.RandomState(seed).standard_normal((2, 3, 32)).astype(np.float32)
    x, _ = apply({"params": params}, np.concatenate([real, garbage], 1), segment_ids)
    assert np.isfinite(np.asarray(x)).all()
    outputs.append(np.asarray(x)[:, :5])
  unpadded, _ = apply({"params": params}, real, np.ones((2, 5), np.int32))
  np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
  np.testing.assert_allclose(outputs[0], unpadded, atol=1e-5)


@pytest.mark.parametrize("pool", [GlobalAveragePool, MAPHead])
def test_pooling_ignores_padding_in_vit(tiny_vit, vit_init, pool):
  from palix.models.vit import _make_pool  # the pooling head exactly as ViT builds it
  c = config(tiny_vit, pool=pool)
  head = _make_pool(c, "pool")
  tokens = np.random.RandomState(2).standard_normal((2, 7, 32)).astype(np.float32)
  valid = np.array([[1] * 4 + [0] * 3, [1] * 7], bool)
  params = vit_init(head, tokens, valid)
  padded = tokens.copy()
  padded[0, 4:] = 50.0
  apply = jax.jit(head.apply)
  got = apply({"params": params}, padded, valid)
  np.testing.assert_allclose(got[0], apply({"params": params}, tokens[:1, :4], valid[:1, :4])[0],
                             atol=1e-5)
  np.testing.assert_allclose(got[1], apply({"params": params}, tokens[1:], valid[1:])[0],
                             atol=1e-5)


# ---- bf16 ----------------------------------------------------------------------------------


def test_bfloat16_compute_close_to_float32(tiny_vit, vit_images, vit_init, vit_forward):
  """bf16 keeps 8 significand bits (unit roundoff 2**-9 ~ 0.2%); two blocks of roundings give
  ~0.7% relative RMS error (0.025 max abs) on the encoder output here. Allow 2% RMS and 0.1
  absolute (outputs are LayerNorm-scaled, |x| < ~5); float32 matches itself to ~1e-6, so also
  require > 1e-3 to show the computation really ran in bf16."""
  c = config(tiny_vit, block=ParallelBlock, qk_norm=True)  # ViT-22B's block, run in bf16
  images = vit_images(32)
  params = vit_init(ViT(c), images)
  _, out32 = vit_forward(c, params, images)
  _, out16 = vit_forward(dataclasses.replace(c, dtype="bfloat16"), params, images)
  assert out16["encoded"].dtype == jnp.bfloat16
  a, b = np.asarray(out32["encoded"]), np.asarray(out16["encoded"], np.float32)
  rel_rms = np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2))
  assert 1e-3 < rel_rms < 0.02
  assert np.abs(a - b).max() < 0.1


# ---- bad input -----------------------------------------------------------------------------


def test_bad_images_raise_clear_errors(tiny_vit, vit_images):
  model = ViT(config(tiny_vit))
  good = vit_images(32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), good)["params"]
  for bad in (good[..., 0], np.concatenate([good, good[..., :1]], -1), good[None]):
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
      jax.eval_shape(model.apply, {"params": params}, bad)
  with pytest.raises(ValueError, match="36x36 is not divisible by the patch size 8"):
    jax.eval_shape(model.apply, {"params": params}, vit_images(36))


def test_bad_config_raises_clear_errors(tiny_vit):
  with pytest.raises(ValueError, match="image_size 36 is not divisible by patch_size 8"):
    config(tiny_vit, image_size=36)
  with pytest.raises(ValueError, match="width 32 is not divisible by num_heads 5"):
    config(tiny_vit, num_heads=5)
  with pytest.raises(ValueError, match=r"unknown ViT scale 'Q'.*Ti, S, M, B, L"):
    ViTConfig(variant="Q/16").resolved()
  with pytest.raises(ValueError, match="missing width, depth, mlp_dim, num_heads, patch_size"):
    ViTConfig().resolved()
