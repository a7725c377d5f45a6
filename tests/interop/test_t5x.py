"""T5X checkpoint import on checkpoints written in T5X's two formats by their own libraries
(flax.serialization msgpack + TensorStore zarr folders; Orbax), in T5X's parameter layout
(``t5x_files``), for a tiny T5.1.1. The weights come from a random Hugging Face T5 (torch), so the
imported model is checked against HF's logits and against palix's HF importer (the same weights
built both ways)."""

import functools
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

from palix.interop import hf_t5
from palix.interop import t5x
from palix.models.t5 import T5EncoderDecoder, silu

from flax import traverse_util
from t5x_files import TINY, t5x_target, write_legacy, write_orbax

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ENC = np.array([[5, 9, 17, 33, 2, 8, 41, 6, 70, 12, 3, 1],
                [7, 50, 22, 14, 1, 0, 0, 0, 0, 0, 0, 0]], np.int64)
DEC = np.array([[0, 11, 4, 90, 23, 19, 2, 8, 64],
                [0, 30, 31, 1, 0, 0, 0, 0, 0]], np.int64)
IMPORT = dict(relative_attention_max_distance=20)  # not in the file: T5X keeps it in gin


@pytest.fixture(scope="module")
def hf():
  """A random T5.1.1-style HF T5 (own lm_head, norms away from 1), its weights and logits."""
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, **TINY)).eval()
  with torch.no_grad():
    model.lm_head.weight = torch.nn.Parameter(torch.randn(TINY["vocab_size"], TINY["d_model"]))
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.add_(0.3 * torch.randn_like(p))
    logits = model(input_ids=torch.from_numpy(ENC), attention_mask=torch.from_numpy(ENC > 0),
                   decoder_input_ids=torch.from_numpy(DEC)).logits.numpy()
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  config = hf_t5.t5_config_from_hf(model.config)
  return sd, logits, config, hf_t5.params_from_hf_state_dict(sd, config)


@functools.lru_cache(maxsize=None)
def _logits_fn(config):
  return jax.jit(lambda p, e, d: T5EncoderDecoder(config).apply({"params": p}, e, d))


def palix_logits(config, params):
  return np.asarray(_logits_fn(config)(params, ENC.astype(np.int32), DEC.astype(np.int32)))


def assert_same_params(got, expected):
  got, expected = traverse_util.flatten_dict(got), traverse_util.flatten_dict(expected)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg="/".join(key))


def test_legacy_unscanned_equals_hf_import(hf, tmp_path):
  sd, hf_logits, hf_config, hf_params = hf
  write_legacy(tmp_path / "model" / "checkpoint_7", t5x_target(sd))
  config, params = t5x.load_t5x(tmp_path / "model", **IMPORT)  # the model folder: newest step
  assert config == hf_config
  assert_same_params(params, hf_params)
  np.testing.assert_allclose(palix_logits(config, params), hf_logits, atol=1e-4, rtol=1e-4)


def test_orbax_scanned_into_both_palix_layouts(hf, tmp_path):
  sd, hf_logits, hf_config, hf_params = hf
  write_orbax(tmp_path / "model", t5x_target(sd, scan_axis=1))
  arrays, what = t5x.read_t5x(tmp_path / "model" / "checkpoint_7")
  assert "orbax" in what and arrays["encoder/layers/mlp/wo/kernel"].shape == (48, 2, 32)
  config = t5x.t5_config_from_t5x(arrays, **IMPORT)
  assert config == hf_config
  assert_same_params(t5x.params_from_t5x(arrays, config), hf_params)
  scan_config = t5x.t5_config_from_t5x(arrays, scan=True, **IMPORT)
  scanned = t5x.params_from_t5x(arrays, scan_config)
  np.testing.assert_array_equal(
      scanned["decoder"]["layers"]["self_attention"]["query"]["kernel"][2],
      hf_params["decoder"]["layers_2"]["self_attention"]["query"]["kernel"])
  np.testing.assert_allclose(palix_logits(scan_config, scanned), hf_logits, atol=1e-4, rtol=1e-4)


def test_legacy_bfloat16_scanned_on_axis_0_with_split_heads(hf, tmp_path):
  """bfloat16 arrays (TensorStore's native bfloat16, T5X checkpoint version 3) stay bit-exact."""
  sd, _, _, hf_params = hf
  target = t5x_target(sd, scan_axis=0, split_heads=True)
  write_legacy(tmp_path / "checkpoint_3", target, dtype=ml_dtypes.bfloat16)
  config, params = t5x.load_t5x(tmp_path / "checkpoint_3" / "checkpoint", scan_axis=0,
                                param_dtype="bfloat16", **IMPORT)
  expected = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), hf_params)
  assert params["encoder"]["layers_1"]["attention"]["out"]["kernel"].dtype == ml_dtypes.bfloat16
  assert_same_params(params, expected)
  assert config.param_dtype == "bfloat16"


def test_ul2_activation_and_tied_logits(hf):
  """No logits_dense: logits via the embedding; UL2's gated SiLU is an argument."""
  sd = hf[0]
  arrays = traverse_util.flatten_dict(t5x_target(sd), sep="/")
  del arrays["decoder/logits_dense/kernel"]
  config = t5x.t5_config_from_t5x(arrays, activation="silu", **IMPORT)
  assert config.logits_via_embedding and config.activation is silu
  assert "logits_dense" not in t5x.params_from_t5x(arrays, config)


def test_per_layer_relative_position_tables(hf):
  """scalable_t5 stores one table per layer: equal ones are read, different ones refused."""
  sd, _, hf_config, hf_params = hf
  target = t5x_target(sd, scan_axis=1)
  for stack, count in (("encoder", 2), ("decoder", 3)):
    table = target[stack].pop("relpos_bias")["rel_embedding"]
    target[stack]["layers"]["relative_posemb"] = {
        "rel_embedding": np.stack([table] * count, axis=1)}
  arrays = traverse_util.flatten_dict(target, sep="/")
  config = t5x.t5_config_from_t5x(arrays, **IMPORT)
  assert config == hf_config
  assert_same_params(t5x.params_from_t5x(arrays, config), hf_params)
  arrays["decoder/layers/relative_posemb/rel_embedding"][:, 1] += 1.0
  with pytest.raises(ValueError, match="layer 1's relative position table differs"):
    t5x.params_from_t5x(arrays, config)


# --- bad checkpoints --------------------------------------------------------------------------------

def test_missing_extra_and_misshaped_arrays_are_named(hf, tmp_path):
  sd = hf[0]
  arrays = traverse_util.flatten_dict(t5x_target(sd), sep="/")
  config = t5x.t5_config_from_t5x(arrays, **IMPORT)
  missing = {k: v for k, v in arrays.items() if k != "decoder/layers_1/mlp/wi_1/kernel"}
  with pytest.raises(ValueError, match=r"missing 'decoder/layers_1/mlp/wi_1/kernel' \(shape "
                                       r"\(32, 48\), for palix decoder/layers_1/mlp/wi_1/kernel\)"):
    t5x.params_from_t5x(missing, config)
  extra = dict(arrays, **{"encoder/layers_0/extra_norm/scale": np.ones(32, np.float32)})
  with pytest.raises(ValueError, match=r"extra 'encoder/layers_0/extra_norm/scale' \(shape "
                                       r"\(32,\)\) has no palix counterpart"):
    t5x.params_from_t5x(extra, config)
  wrong = dict(arrays, **{"encoder/layers_1/attention/out/kernel": np.ones((30, 32), np.float32)})
  with pytest.raises(ValueError, match=r"'encoder/layers_1/attention/out/kernel' has shape "
                                       r"\(30, 32\); palix encoder/layers_1/attention/out/kernel "
                                       r"needs \(32, 32\) or \(4, 8, 32\)"):
    t5x.params_from_t5x(wrong, config)


def test_bad_files(hf, tmp_path):
  sd = hf[0]
  step = tmp_path / "checkpoint_1"
  write_legacy(step, t5x_target(sd))
  shutil.rmtree(step / "target.decoder.layers_2.mlp.wo.kernel")
  with pytest.raises(ValueError, match=r"TensorStore folder 'target.decoder.layers_2.mlp.wo.kernel' "
                                       r"of 'decoder/layers_2/mlp/wo/kernel' is missing"):
    t5x.load_t5x(step, **IMPORT)
  (step / "checkpoint").write_bytes(b"model_checkpoint_path: 'model.ckpt-1'")
  with pytest.raises(ValueError, match="TensorFlow checkpoint"):
    t5x.load_t5x(step)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    t5x.load_t5x(tmp_path / "nowhere")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="not a T5X checkpoint"):
    t5x.load_t5x(empty)
  with pytest.raises(ValueError, match="no checkpoint_5"):
    t5x.find_checkpoint(tmp_path, step=5)
  arrays = traverse_util.flatten_dict(t5x_target(sd), sep="/")
  relu = {k.replace("wi_0", "wi"): v for k, v in arrays.items() if "wi_1" not in k}
  with pytest.raises(ValueError, match="single 'wi'"):
    t5x.t5_config_from_t5x(relu)
  with pytest.raises(ValueError, match="activation 'relu'"):
    t5x.t5_config_from_t5x(arrays, activation="relu")
