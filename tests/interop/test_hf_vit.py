"""The HF ViT importer against transformers' ViTModel itself (torch, CPU, fp32)."""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from palix.interop import hf_vit
from palix.interop.safetensors_file import read_safetensors
from palix.models.vit import ViT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model():
  torch.manual_seed(0)
  config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, image_size=32, patch_size=8)
  return transformers.ViTModel(config).eval()


@pytest.fixture(scope="module")
def images_and_reference(hf_model):
  images = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():  # HF takes NCHW pixel values
    out = hf_model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  return images, out.last_hidden_state.numpy()


@pytest.fixture(scope="module")
def state_dict(hf_model):
  return {k: v.numpy() for k, v in hf_model.state_dict().items()}


@functools.partial(jax.jit, static_argnums=0)  # one compile per config for the whole module
def _encoded(config, params, images):
  return ViT(config).apply({"params": params}, images)[1]["encoded"]


def encoded(config, params, images):
  return np.asarray(_encoded(config, params, images))


def test_config_mapping(hf_model):
  c = hf_vit.vit_config_from_hf(hf_model.config)
  assert (c.width, c.depth, c.mlp_dim, c.num_heads, c.patch_size, c.image_size) == (
      64, 2, 128, 4, 8, 32)
  assert c.class_token and c.layer_norm_eps == 1e-12 and c.qkv_bias
  assert hf_vit.vit_config_from_hf(hf_model.config.to_dict()) == c
  with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
    hf_vit.vit_config_from_hf({**hf_model.config.to_dict(), "hidden_act": "relu"})
  with pytest.raises(ValueError, match=r"overrides \['width'\] would change the model"):
    hf_vit.vit_config_from_hf(hf_model.config, width=32)


@pytest.mark.parametrize("scan", [False, True])
def test_state_dict_import_matches_hf(hf_model, state_dict, images_and_reference, scan):
  images, reference = images_and_reference
  config = hf_vit.vit_config_from_hf(hf_model.config, scan=scan)
  params = hf_vit.params_from_hf_state_dict(state_dict, config)
  got = encoded(config, params, images)
  assert got.shape == reference.shape == (2, 1 + 16, 64)
  np.testing.assert_allclose(got, reference, atol=1e-4)


def test_checkpoint_names_and_prefix_give_the_same_params(hf_model, state_dict, tmp_path):
  """transformers 5 renames modules in memory (layers.0.attention.q_proj); save_pretrained writes
  the Hub names (encoder.layer.0.attention.attention.query). ViTForImageClassification adds vit.
  and a classifier, which is left out."""
  hf_model.save_pretrained(tmp_path, safe_serialization=True)
  saved = read_safetensors(tmp_path / "model.safetensors")
  assert "encoder.layer.0.attention.attention.query.weight" in saved
  assert "layers.0.attention.q_proj.weight" in state_dict
  config = hf_vit.vit_config_from_hf(hf_model.config)
  a = hf_vit.params_from_hf_state_dict(state_dict, config)
  classifier = {f"vit.{k}": v for k, v in saved.items()}
  classifier["classifier.weight"] = np.zeros((10, 64), np.float32)
  b = hf_vit.params_from_hf_state_dict(classifier, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_safetensors_folder_round_trip(hf_model, images_and_reference, tmp_path):
  images, reference = images_and_reference
  hf_model.save_pretrained(tmp_path, safe_serialization=True)
  config, params = hf_vit.load_hf_vit(tmp_path)
  np.testing.assert_allclose(encoded(config, params, images), reference, atol=1e-4)


def test_bad_weights_are_named(hf_model, state_dict, tmp_path):
  config = hf_vit.vit_config_from_hf(hf_model.config)
  missing = {k: v for k, v in state_dict.items() if k != "layers.1.mlp.fc2.bias"}
  with pytest.raises(ValueError, match=r"no 'encoder.layer.1.output.dense.bias'"):
    hf_vit.params_from_hf_state_dict(missing, config)
  extra = {**state_dict, "layers.2.layernorm_before.weight": np.ones(64, np.float32)}
  with pytest.raises(ValueError, match=r"does not use: \['encoder.layer.2.layernorm_before"):
    hf_vit.params_from_hf_state_dict(extra, config)
  wrong_size = dict(state_dict)
  wrong_size["embeddings.position_embeddings"] = np.zeros((1, 26, 64), np.float32)
  with pytest.raises(ValueError, match=r"posemb/pos_embedding: HF gives \(25, 64\)"):
    hf_vit.params_from_hf_state_dict(wrong_size, config)
  with pytest.raises(ValueError, match="class_token"):
    hf_vit.params_from_hf_state_dict(state_dict, dataclasses.replace(config, class_token=False))


def test_pickled_weights_are_refused(hf_model, tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(ValueError, match=r"only pickled weights \['pytorch_model.bin'\]"):
    hf_vit.load_hf_vit(tmp_path)
