"""ViT with an AdaTape tape: hidden tape slots change nothing, scan equals unrolled with the
tape before the first or a middle block, and bad settings name the gin binding."""

import dataclasses

import gin
import jax
import numpy as np
import pytest

from palix.layers.adatape import AdaTapeConfig, InputTapeBank, LearnedTapeBank
from palix.layers.norms import LayerNorm
from palix.layers.pooling import GlobalAveragePool
from palix.models.vit import SequentialBlock, ViT, ViTConfig, VisionEncoder

# 32 px images, patch 8: 16 tokens; the input bank has (32 / 4)^2 = 64 entries.
TAPE = AdaTapeConfig(bank_patch_size=4, max_tape_tokens=5, top_k=3, threshold=1.6,
                     key_features=4)


def config(tiny_vit, tape_layer, **kw):
  return ViTConfig(**{**tiny_vit, "pool": GlobalAveragePool,
                      "adatape": dataclasses.replace(TAPE, tape_layer=tape_layer), **kw}
                   ).resolved()


def to_scan(params, depth, tape_layer):
  """Unrolled ``block00..`` -> ``blocks`` (before the tape) and ``blocks_after_tape``."""
  t = dict(params["Transformer"])
  blocks = [t.pop(f"block{i:02d}") for i in range(depth)]
  stack = lambda bs: {"block": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *bs)}
  if tape_layer:
    t["blocks"], t["blocks_after_tape"] = stack(blocks[:tape_layer]), stack(blocks[tape_layer:])
  else:
    t["blocks"] = stack(blocks)
  return {**params, "Transformer": t}


@pytest.fixture(scope="module")
def tape_run(tiny_vit, vit_images, vit_init):
  """Params, images and the unrolled forward (with the tape module's output captured) of the
  tiny ViT with a tape before block 1."""
  c = config(tiny_vit, tape_layer=1)
  images = vit_images(32, batch=4)
  params = vit_init(ViT(c), images)
  apply = jax.jit(lambda p, x: ViT(c).apply({"params": p}, x, capture_intermediates=True,
                                            mutable=["intermediates"]))
  (pooled, out), state = apply(params, images)
  return c, params, images, pooled, out, state["intermediates"]


def test_hidden_tape_slots_change_nothing(tape_run):
  """Each example's outputs equal those of a sequence that holds only its used tape tokens
  (blocks, final norm and pooling rerun by hand on the shortened sequence)."""
  c, params, _, pooled, out, captured = tape_run
  used = np.asarray(out["tape_tokens_used"])
  assert len(set(used)) > 1 and used.min() >= 1 and used.max() <= 5
  taped, tape_ids, _ = captured["tape"]["__call__"][0]  # the tokens block 1 sees
  assert taped.shape == (4, 16 + 5, 32)
  np.testing.assert_array_equal(tape_ids, np.arange(21)[None] < 16 + used[:, None])
  np.testing.assert_array_equal(out["tape_segment_ids"], tape_ids)
  t = params["Transformer"]
  block = jax.jit(lambda p, x: SequentialBlock(c).apply({"params": p}, x,
                                                        np.ones((1, 1, 1, 1), bool)))
  norm = lambda x: LayerNorm(epsilon=c.layer_norm_eps).apply({"params": t["encoder_norm"]}, x)
  for b, n in enumerate(used):
    short = np.asarray(taped)[b:b + 1, :16 + n]  # the hidden slots removed
    want = norm(block(t["block01"], short))[0]
    np.testing.assert_allclose(out["encoded"][b, :16 + n], want, atol=2e-5)
    np.testing.assert_allclose(pooled[b], np.asarray(want).mean(0), atol=2e-5)
  # The tokens before the tape went through block 0 untouched by it.
  np.testing.assert_allclose(taped[:, :16], out["block00"], atol=1e-6)


@pytest.mark.parametrize("tape_layer,bank", [(0, InputTapeBank), (1, LearnedTapeBank)])
def test_scan_matches_unrolled(tiny_vit, vit_images, vit_init, vit_forward, tape_layer, bank):
  c = config(tiny_vit, tape_layer=tape_layer, adatape=dataclasses.replace(
      TAPE, tape_layer=tape_layer, bank=bank, bank_size=40))
  images = vit_images(32, batch=3)
  params = vit_init(ViT(c), images)
  if bank is LearnedTapeBank:
    assert params["tape"]["bank"]["entries"].shape == (40, 32)
  ref_pooled, ref = vit_forward(c, params, images)
  scanned = dataclasses.replace(c, scan=True)
  pooled, out = vit_forward(scanned, to_scan(params, c.depth, tape_layer), images)
  for name in ("block00", "block01", "encoded", "tape_tokens_used", "ponder_cost"):
    np.testing.assert_allclose(out[name], ref[name], atol=2e-5, err_msg=name)
  np.testing.assert_allclose(pooled, ref_pooled, atol=2e-5)
  assert ref["encoded"].shape == (3, 16 + 5, 32)


@pytest.mark.parametrize("bindings,message", [
    ("AdaTapeConfig.threshold = 0.0",
     r"AdaTapeConfig.threshold = 0.0 \(bound as ViTConfig.adatape\): the halting threshold must "
     r"be > 0"),
    ("AdaTapeConfig.max_tape_tokens = 6\nAdaTapeConfig.top_k = 3",
     r"max_tape_tokens \* AdaTapeConfig.top_k = 6 x 3 \(bound as ViTConfig.adatape\): the reader "
     r"may need 18 distinct bank entries but the bank has 16 \(InputTapeBank over 16 input "
     r"items\)"),
    ("AdaTapeConfig.tape_layer = 2",
     r"AdaTapeConfig.tape_layer = 2 \(bound as ViTConfig.adatape\) is outside the depth: the "
     r"tape goes before one of blocks 0..1 \(depth 2\)"),
    ("AdaTapeConfig.bank_patch_size = 5",
     r"AdaTapeConfig.bank_patch_size = 5 .* does not divide ViTConfig.image_size = 32"),
])
def test_bad_settings_name_the_gin_binding(bindings, message):
  gin.clear_config()
  try:
    gin.parse_config(f"""
        import palix.models.vit
        ViTConfig.width = 32
        ViTConfig.depth = 2
        ViTConfig.mlp_dim = 64
        ViTConfig.num_heads = 4
        ViTConfig.patch_size = 8
        ViTConfig.image_size = 32
        ViTConfig.adatape = @AdaTapeConfig()
        AdaTapeConfig.bank_patch_size = 8
        AdaTapeConfig.max_tape_tokens = 4
        AdaTapeConfig.top_k = 2
        VisionEncoder.config = @ViTConfig()
        {bindings}
        """)
    with pytest.raises(ValueError, match=message):
      VisionEncoder()
  finally:
    gin.clear_config()
