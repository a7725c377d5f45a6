"""palix's T5 against Hugging Face's PyTorch T5 (an independent implementation) on imported weights."""

import functools
import json

import jax
import numpy as np
import pytest

from palix.interop import hf_t5
from palix.models.t5 import T5EncoderDecoder, gelu_tanh, silu

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = dict(vocab_size=96, d_model=32, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            d_kv=12, dropout_rate=0.0, relative_attention_num_buckets=16,
            relative_attention_max_distance=20)
# Encoder inputs with padding (0) at the end of the second row; 12 tokens reach the log buckets.
ENC = np.array([[5, 9, 17, 33, 2, 8, 41, 6, 70, 12, 3, 1],
                [7, 50, 22, 14, 1, 0, 0, 0, 0, 0, 0, 0]], np.int64)
DEC = np.array([[0, 11, 4, 90, 23, 19, 2, 8, 64],
                [0, 30, 31, 1, 0, 0, 0, 0, 0]], np.int64)


def _hf_model(feed_forward_proj="gated-gelu", untied=True, seed=0):
  """A random HF T5 with every weight (norm scales included) away from its init value."""
  torch.manual_seed(seed)
  cfg = transformers.T5Config(feed_forward_proj=feed_forward_proj,
                              tie_word_embeddings=not untied, **TINY)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    if untied:  # transformers 5 ties lm_head even for T5.1.1 configs; give it its own matrix
      model.lm_head.weight = torch.nn.Parameter(torch.randn(TINY["vocab_size"], TINY["d_model"]))
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.add_(0.3 * torch.randn_like(p))
  return model


def _state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _hf_logits(model, enc=ENC, dec=DEC):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(enc), attention_mask=torch.from_numpy(enc > 0),
                decoder_input_ids=torch.from_numpy(dec))
  return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


@pytest.fixture(scope="module")
def untied():
  """The T5.1.1-style HF model, its logits and the imported palix config + params."""
  model = _hf_model()
  config = hf_t5.t5_config_from_hf(model.config)
  params = hf_t5.params_from_hf_state_dict(_state_dict(model), config)
  return model, _hf_logits(model), config, params


@functools.lru_cache(maxsize=None)
def _forward(config):
  """Jitted (logits, encoder output) of one config; configs are hashable, so equal ones share it."""
  module = T5EncoderDecoder(config)

  def forward(p, enc, dec):
    encoded = module.apply({"params": p}, module.apply({"params": p}, enc, method="embed"), enc > 0,
                           method="encode")
    return module.apply({"params": p}, encoded, enc > 0, dec, method="decode"), encoded

  return jax.jit(forward)


def _palix_logits(config, params, enc=ENC, dec=DEC):
  return np.asarray(_forward(config)(params, enc, dec)[0])


def test_config_mapping(untied):
  model, _, config, _ = untied
  assert (config.vocab_size, config.emb_dim, config.mlp_dim, config.num_heads, config.head_dim) == (
      96, 32, 48, 4, 12)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (16, 20)
  assert config.activation is gelu_tanh and not config.logits_via_embedding
  # The parsed config.json (what a folder gives) maps the same way as the transformers object.
  assert hf_t5.t5_config_from_hf(json.loads(model.config.to_json_string())) == config


def test_logits_match_hf_with_encoder_padding(untied):
  _, (hf_logits, _), config, params = untied
  ours = _palix_logits(config, params)
  assert ours.shape == hf_logits.shape and ours.dtype == np.float32
  np.testing.assert_allclose(ours, hf_logits, atol=1e-4, rtol=1e-4)


def test_encoder_output_matches_hf_on_real_tokens(untied):
  _, (_, hf_encoded), config, params = untied
  encoded = _forward(config)(params, ENC, DEC)[1]
  real = ENC > 0
  np.testing.assert_allclose(np.asarray(encoded)[real], hf_encoded[real], atol=1e-4, rtol=1e-4)


def test_scanned_import_stacks_the_layers(untied):
  """scan=True stacks layer i at index i (scan == unrolled is tested in test_t5_model.py)."""
  model, _, _, unrolled = untied
  config = hf_t5.t5_config_from_hf(model.config, scan=True)
  params = hf_t5.params_from_hf_state_dict(_state_dict(model), config)
  for stack, depth in (("encoder", 2), ("decoder", 3)):
    flat = jax.tree_util.tree_leaves_with_path(params[stack]["layers"])
    assert flat and all(leaf.shape[0] == depth for _, leaf in flat)
    for i in range(depth):
      layer = unrolled[stack][f"layers_{i}"]
      expected = dict(jax.tree_util.tree_leaves_with_path(layer))
      for path, leaf in flat:
        np.testing.assert_array_equal(leaf[i], expected[path])
    assert params[stack]["relpos_bias"]["rel_embedding"].shape == (16, 4)


@pytest.mark.parametrize("proj,untied_head,activation", [("gated-silu", True, silu),
                                                         ("gated-gelu", False, gelu_tanh)])
def test_other_variants_match_hf(proj, untied_head, activation):
  """UL2's gated-SiLU MLP, and original T5's tied, d_model**-0.5-scaled output logits."""
  model = _hf_model(proj, untied=untied_head, seed=1)
  config = hf_t5.t5_config_from_hf(model.config)
  assert config.activation is activation and config.logits_via_embedding == (not untied_head)
  params = hf_t5.params_from_hf_state_dict(_state_dict(model), config)
  assert ("logits_dense" in params) == untied_head
  np.testing.assert_allclose(_palix_logits(config, params), _hf_logits(model)[0], atol=1e-4,
                             rtol=1e-4)


def test_safetensors_folder_round_trip(untied, tmp_path):
  model, (hf_logits, _), config, params = untied
  state = {k: v.contiguous() for k, v in model.state_dict().items()
           if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
  safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(model.config.to_json_string())
  loaded_config, loaded = hf_t5.load_hf_t5(tmp_path)
  assert loaded_config == config
  flat = jax.tree_util.tree_leaves_with_path
  assert [p for p, _ in flat(loaded)] == [p for p, _ in flat(params)]
  for (path, a), (_, b) in zip(flat(loaded), flat(params)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  np.testing.assert_allclose(_palix_logits(loaded_config, loaded), hf_logits, atol=1e-4, rtol=1e-4)


def test_save_pretrained_folder_of_transformers_5(tmp_path):
  """transformers 5 writes T5.1.1 configs as tied + unscaled and leaves lm_head out of the file."""
  torch.manual_seed(2)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, **TINY)).eval()
  model.save_pretrained(tmp_path)
  config, params = hf_t5.load_hf_t5(tmp_path)
  assert not config.logits_via_embedding
  np.testing.assert_array_equal(params["logits_dense"]["kernel"],
                                params["token_embedder"]["embedding"].T)
  np.testing.assert_allclose(_palix_logits(config, params), _hf_logits(model)[0], atol=1e-4,
                             rtol=1e-4)


def test_sharded_folder(untied, tmp_path):
  model, _, config, params = untied
  state = {k: v.contiguous() for k, v in model.state_dict().items()
           if not k.endswith("embed_tokens.weight")}
  names = sorted(state)
  shards = {"model-00001-of-00002.safetensors": names[:20],
            "model-00002-of-00002.safetensors": names[20:]}
  for shard, keys in shards.items():
    safetensors_torch.save_file({k: state[k] for k in keys}, str(tmp_path / shard))
  weight_map = {k: shard for shard, keys in shards.items() for k in keys}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  (tmp_path / "config.json").write_text(model.config.to_json_string())
  _, loaded = hf_t5.load_hf_t5(tmp_path)
  np.testing.assert_array_equal(loaded["decoder"]["layers_2"]["mlp"]["wo"]["kernel"],
                                params["decoder"]["layers_2"]["mlp"]["wo"]["kernel"])


# --- bad input ------------------------------------------------------------------------------------


def test_pickle_only_folder_is_refused(untied, tmp_path):
  (tmp_path / "config.json").write_text(untied[0].config.to_json_string())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(ValueError, match="pickled weights.*pytorch_model.bin"):
    hf_t5.load_hf_t5(tmp_path)


def test_missing_folder_and_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf_t5.load_hf_t5(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_t5.load_hf_t5(tmp_path)


@pytest.mark.parametrize("change,message", [
    ({"feed_forward_proj": "relu"}, "feed_forward_proj='relu'"),
    ({"model_type": "umt5"}, "model_type 'umt5'"),
    ({"relative_attention_max_distance": 4}, "max_distance=4"),
])
def test_unsupported_configs(untied, change, message):
  cfg = {**json.loads(untied[0].config.to_json_string()), **change}
  with pytest.raises(ValueError, match=message):
    hf_t5.t5_config_from_hf(cfg)


def test_state_dict_mismatches_are_named(untied):
  model, _, config, _ = untied
  sd = _state_dict(model)
  extra = dict(sd, **{"encoder.block.2.layer.0.layer_norm.weight": np.ones(32, np.float32)})
  with pytest.raises(ValueError, match="no palix counterpart.*encoder.block.2"):
    hf_t5.params_from_hf_state_dict(extra, config)
  missing = {k: v for k, v in sd.items() if k != "decoder.block.1.layer.1.EncDecAttention.v.weight"}
  with pytest.raises(ValueError, match="lacks 'decoder.block.1.layer.1.EncDecAttention.v.weight'"):
    hf_t5.params_from_hf_state_dict(missing, config)
  wrong = dict(sd, **{"decoder.final_layer_norm.weight": np.ones(31, np.float32)})
  with pytest.raises(ValueError, match="decoder/decoder_norm/scale: HF gives \\(31,\\)"):
    hf_t5.params_from_hf_state_dict(wrong, config)
  narrow = dict(sd, **{"encoder.block.1.layer.0.SelfAttention.o.weight": np.ones((32, 40))})
  with pytest.raises(ValueError, match=r"'encoder.block.1.layer.0.SelfAttention.o.weight' has "
                                       r"shape \(32, 40\); the config needs \(32, 48\)"):
    hf_t5.params_from_hf_state_dict(narrow, config)
