"""Hugging Face export: transformers loads the folder and computes palix's outputs; palix's HF
importers read it back bit for bit (palix -> HF -> palix)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.interop import hf_export
from palix.interop import hf_t5
from palix.interop import hf_vit
from palix.interop.safetensors_file import read_safetensors
from palix.layers.mlp import gelu_tanh
from palix.layers.pooling import GlobalAveragePool, MAPHead
from palix.layers.position import SinCos2DPosEmb
from palix.models.t5 import T5Config, T5EncoderDecoder, silu
from palix.models.vit import ViT, ViTConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

T5_TINY = dict(vocab_size=80, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
               num_encoder_layers=2, num_decoder_layers=3, relative_attention_num_buckets=16,
               relative_attention_max_distance=20)
ENC = np.array([[5, 9, 17, 33, 2, 8, 41, 6, 70, 12, 3, 1], [7, 50, 22, 14, 1, 0, 0, 0, 0, 0, 0, 0]])
DEC = np.array([[0, 11, 4, 60, 23, 19, 2, 8, 64], [0, 30, 31, 1, 0, 0, 0, 0, 0]])
VIT_TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, image_size=32,
                class_token=True)


def _perturbed(params, seed):
  """Init values moved: norm scales away from 1, biases away from 0, all else scaled."""
  leaves, treedef = jax.tree.flatten(nn.meta.unbox(params))
  rng = np.random.RandomState(seed)
  moved = [np.asarray(x, np.float32) + 0.2 * rng.randn(*np.shape(x)).astype(np.float32)
           for x in leaves]
  return jax.tree.unflatten(treedef, moved)


def _cast(params, dtype):
  return jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)


def _flat_equal(a, b):
  fa = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(a)}
  fb = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(b)}
  assert fa.keys() == fb.keys()
  for key, value in fa.items():
    assert np.asarray(fb[key]).dtype == np.asarray(value).dtype, key
    np.testing.assert_array_equal(np.asarray(fb[key]), np.asarray(value), err_msg=key)


T5_CASES = {
    "t5_1_1": dict(),
    "ul2_scanned_bfloat16_tied": dict(activation=silu, scan=True, param_dtype="bfloat16",
                                      logits_via_embedding=True),
}


@pytest.mark.parametrize("case", list(T5_CASES))
def test_t5_export_loads_in_transformers_and_round_trips(case, tmp_path):
  config = T5Config(**T5_TINY, **T5_CASES[case]).validate()
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = _perturbed(T5EncoderDecoder(config).init(jax.random.PRNGKey(0), tokens,
                                                    tokens)["params"], seed=1)
  params = _cast(params, config.params_dtype)
  folder = hf_export.export_t5(tmp_path / "hf", params, config)
  stored = read_safetensors(folder / "model.safetensors")
  assert {v.dtype for v in stored.values()} == {np.dtype(config.params_dtype)}
  assert ("lm_head.weight" in stored) == (not config.logits_via_embedding)
  assert "encoder.embed_tokens.weight" not in stored  # tied to shared.weight in HF

  ours = np.asarray(jax.jit(T5EncoderDecoder(config).apply)({"params": params}, ENC, DEC))
  model = transformers.T5ForConditionalGeneration.from_pretrained(
      folder, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(ENC), attention_mask=torch.from_numpy(ENC > 0),
                   decoder_input_ids=torch.from_numpy(DEC)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)

  back_config, back = hf_t5.load_hf_t5(folder, scan=config.scan, param_dtype=config.param_dtype)
  assert back_config == config
  _flat_equal(params, back)


VIT_CASES = {
    "exact_gelu": dict(),
    "tanh_gelu_scanned_gap_bfloat16": dict(mlp_activation=gelu_tanh, scan=True,
                                          pool=GlobalAveragePool, param_dtype="bfloat16"),
}


@pytest.mark.parametrize("case", list(VIT_CASES))
def test_vit_export_loads_in_transformers_and_round_trips(case, tmp_path):
  config = ViTConfig(**VIT_TINY, **VIT_CASES[case]).resolved()
  images = np.random.RandomState(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  params = _perturbed(ViT(config).init(jax.random.PRNGKey(0), images)["params"], seed=2)
  params = _cast(params, config.params_dtype)
  folder = hf_export.export_vit(tmp_path / "hf", params, config)

  _, out = jax.jit(ViT(config).apply)({"params": params}, images)
  model = transformers.ViTModel.from_pretrained(folder, add_pooling_layer=False,
                                                dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(np.asarray(out["encoded"]), theirs.last_hidden_state.numpy(),
                             atol=1e-4, rtol=1e-4)

  back_config, back = hf_vit.load_hf_vit(folder, scan=config.scan, param_dtype=config.param_dtype)
  assert dataclasses.replace(back_config, pool=config.pool) == config  # pooling is not stored
  _flat_equal(params, back)


def test_vits_without_a_hf_counterpart_are_refused():
  for change, name in ((dict(class_token=False), "class_token"), (dict(pool=MAPHead), "MAPHead"),
                       (dict(posemb=SinCos2DPosEmb), "SinCos2DPosEmb"),
                       (dict(qk_norm=True), "qk_norm")):
    config = ViTConfig(**{**VIT_TINY, **change}).resolved()
    with pytest.raises(ValueError, match=f"no Hugging Face ViTModel counterpart: .*{name}"):
      hf_export.vit_hf_config(config)
