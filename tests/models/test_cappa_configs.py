"""The CapPa gin files: ``palix params`` on cappa_b16 against a closed form, the tiny pair."""

import gin
import pytest
import sentencepiece as spm

from palix import config as palix_config
from palix.cli import main as cli_main
from palix.models.cappa import CapPaModel


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _model(gin_file):
  palix_config.parse_gin([f"models/cappa/{gin_file}"], [], finalize=False)
  return gin.query_parameter("%MODEL").scoped_configurable_fn()


def vit_b16_params(width=768, depth=12, mlp=3072, patch=16, image=224):
  """Pre-LN ViT with biases everywhere, conv stem, learned 1-D position table, final LN."""
  d = width
  block = 2 * (2 * d) + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
  stem = patch * patch * 3 * d + d + (image // patch) ** 2 * d
  return depth * block + stem + 2 * d


def cappa_decoder_params(width=768, depth=6, mlp=3072, vocab=32000, max_len=64):
  """Bias-free blocks: 3 scale-only LNs, self + cross attention (4 d x d each, no bias), MLP
  without biases; token table with the [MASK] row, position table, final LN, logits + bias."""
  d = width
  block = 3 * d + 2 * (4 * d * d) + 2 * d * mlp
  return depth * block + (vocab + 1) * d + max_len * d + 2 * d + d * vocab + vocab


def test_palix_params_on_cappa_b16_matches_the_closed_form(clean_gin, capsys):
  # Scanned ViT layers trace once (fast); scanning only stacks the parameters, same count.
  assert cli_main.main(["params", "--gin_file=models/cappa/cappa_b16.gin",
                        "--gin.ViTConfig.scan=True"]) == 0
  lines = capsys.readouterr().out.splitlines()
  total = int(lines[-1].split(":")[1])
  by_module = {l.split()[0]: int(l.split()[1].replace(",", "")) for l in lines[1:3]}
  assert by_module == {"vit": vit_b16_params(), "decoder": cappa_decoder_params()}
  assert total == vit_b16_params() + cappa_decoder_params()
  assert abs(vit_b16_params() / 86e6 - 1) < 0.01  # ViT-B/16 without a head: ~86M
  assert 191e6 < total < 192e6


def test_tiny_configs_differ_only_in_masked_pred_prob(clean_gin):
  cappa = _model("cappa_tiny.gin")
  gin.clear_config()
  cap = _model("cap_tiny.gin")
  assert isinstance(cappa, CapPaModel) and isinstance(cap, CapPaModel)
  assert (cappa.masked_pred_prob, cap.masked_pred_prob) == (0.75, 0.0)
  assert cappa.config == cap.config and cappa.image_size == cap.image_size == 28


def test_tiny_vocab_covers_the_palix_sentencepiece_model(clean_gin):
  model = _model("cappa_tiny.gin")
  sp = spm.SentencePieceProcessor(
      model_file=str(palix_config.GIN_DIR.parent / "tasks" / "assets" / "palix_sp.model"))
  assert model.config.vocab_size >= sp.get_piece_size()
  # The longest Fashion-MNIST caption, plus EOS, fits the decoder.
  assert len(sp.encode("a photo of an ankle boot")) + 1 <= model.max_target_len
