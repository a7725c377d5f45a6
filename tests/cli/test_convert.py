"""``palix convert``: HF folder -> Orbax checkpoint + config.gin, restored and compared end to end."""

import json

import gin
import jax
import numpy as np
import pytest

from palix import config as palix_config
from palix.cli import main as cli_main
from palix.interop import hf_t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
ocp = pytest.importorskip("orbax.checkpoint")

T5_TINY = dict(vocab_size=80, d_model=32, d_ff=40, num_layers=2, num_decoder_layers=2, num_heads=4,
               d_kv=8, dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def _restore(path):
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(path)
  finally:
    checkpointer.close()


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _model_from_gin(path):
  return palix_config.model_from_gin([str(path)])


@pytest.fixture(scope="module")
def hf_t5_folder(tmp_path_factory):
  """A random T5.1.1-style HF model with its own lm_head, saved as config.json + safetensors."""
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_TINY)).eval()
  with torch.no_grad():
    model.lm_head.weight = torch.nn.Parameter(torch.randn(80, 32))
  folder = tmp_path_factory.mktemp("hf_t5")
  state = {k: v.contiguous() for k, v in model.state_dict().items()
           if not k.endswith("embed_tokens.weight")}
  safetensors_torch.save_file(state, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(model.config.to_json_string())
  return folder, model


def test_convert_t5_end_to_end(hf_t5_folder, tmp_path, capsys):
  folder, model = hf_t5_folder
  out = tmp_path / "ckpt"
  assert cli_main.main(["convert", f"--from_hf={folder}", f"--output={out}"]) == 0
  printed = capsys.readouterr().out
  expected_config, expected = hf_t5.load_hf_t5(folder)
  restored = _flat(_restore(out)["params"])
  assert restored.keys() == _flat(expected).keys()
  for key, value in _flat(expected).items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
  total = sum(v.size for v in restored.values())
  assert printed.strip().splitlines()[-1] == f"total_params: {total}"

  spec = _model_from_gin(out / "config.gin")
  assert spec.config == expected_config
  # The restored checkpoint through the gin-built module reproduces HF's logits.
  enc = np.array([[4, 9, 13, 2, 1, 0]]), np.array([[0, 7, 3, 5]])
  logits = jax.jit(spec.module.apply)(_restore(out), *enc)
  with torch.no_grad():
    hf = model(input_ids=torch.from_numpy(enc[0]), attention_mask=torch.from_numpy(enc[0] > 0),
               decoder_input_ids=torch.from_numpy(enc[1])).logits.numpy()
  np.testing.assert_allclose(np.asarray(logits), hf, atol=1e-4, rtol=1e-4)

  gin.clear_config()
  try:
    assert cli_main.main(["params", f"--gin_file={out / 'config.gin'}"]) == 0
  finally:
    gin.clear_config()
  assert capsys.readouterr().out.strip().splitlines()[-1] == f"total_params: {total}"


def test_convert_scanned_bfloat16(hf_t5_folder, tmp_path):
  folder, _ = hf_t5_folder
  out = tmp_path / "scanned"
  assert cli_main.main(["convert", f"--from_hf={folder}", f"--output={out}", "--scan",
                        "--param_dtype=bfloat16"]) == 0
  params = _restore(out)["params"]
  kernel = params["encoder"]["layers"]["attention"]["query"]["kernel"]
  assert kernel.shape == (2, 32, 4, 8) and str(kernel.dtype) == "bfloat16"
  spec = _model_from_gin(out / "config.gin")
  assert spec.config.scan and spec.config.param_dtype == "bfloat16"


def test_convert_vit(tmp_path):
  hf_vit = pytest.importorskip("palix.interop.hf_vit")
  torch.manual_seed(0)
  model = transformers.ViTModel(transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      image_size=32, patch_size=8), add_pooling_layer=False).eval()
  folder = tmp_path / "hf_vit"
  model.save_pretrained(folder)
  out = tmp_path / "vit_ckpt"
  assert cli_main.main(["convert", f"--from_hf={folder}", f"--output={out}"]) == 0
  config, expected = hf_vit.load_hf_vit(folder)
  restored = _flat(_restore(out)["params"])
  for key, value in _flat(expected).items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
  assert _model_from_gin(out / "config.gin").config == config


def test_errors_are_clear(hf_t5_folder, tmp_path, capsys):
  folder, _ = hf_t5_folder

  def convert(source, output=tmp_path / "never", *extra):
    code = cli_main.main(["convert", f"--from_hf={source}", f"--output={output}", *extra])
    return code, capsys.readouterr().err

  code, err = convert(tmp_path / "missing")
  assert code == 1 and "does not exist" in err
  empty = tmp_path / "empty"
  empty.mkdir()
  code, err = convert(empty)
  assert code == 1 and "config.json not found" in err
  bert = tmp_path / "bert"
  bert.mkdir()
  (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
  code, err = convert(bert)
  assert code == 1 and "model_type 'bert' is not supported" in err
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text((folder / "config.json").read_text())
  (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04never unpickled")
  code, err = convert(pickled)
  assert code == 1 and "pickled weights" in err and "pytorch_model.bin" in err
  taken = tmp_path / "taken"
  taken.mkdir()
  code, err = convert(folder, taken)
  assert code == 1 and "already exists" in err and "--overwrite" in err
  assert not (tmp_path / "never").exists()
