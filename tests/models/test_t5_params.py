"""Parameter counts of the T5 gin files against Hugging Face's models and a closed form."""

import gin
import jax
import pytest

from palix import config as palix_config
from palix import model_stats
from palix.cli import main as cli_main
from palix.models.t5 import T5Spec


def _spec(gin_file):
  gin.clear_config()
  try:
    palix_config.parse_gin([gin_file], finalize=False)
    return T5Spec()
  finally:
    gin.clear_config()


def _count(spec):
  return model_stats.count_params(model_stats.param_shapes(spec.module, spec.example_inputs(1)))


def closed_form(c):
  """Embedding + untied head, per-layer attention/MLP/norm weights, two bias tables, two norms."""
  d, inner, f = c.emb_dim, c.num_heads * c.head_dim, c.mlp_dim
  encoder_layer = 4 * d * inner + 3 * d * f + 2 * d
  decoder_layer = 8 * d * inner + 3 * d * f + 3 * d
  embeddings = c.vocab_size * d * (1 if c.logits_via_embedding else 2)
  return (embeddings + c.num_encoder_layers * encoder_layer + c.num_decoder_layers * decoder_layer
          + 2 * c.relative_attention_num_buckets * c.num_heads + 2 * d)


def _hf_count(**kwargs):
  """Parameters of an HF T5ForConditionalGeneration built on the meta device (nothing allocated).

  transformers 5 ties ``lm_head`` to ``shared`` even for T5.1.1 configs, so the count goes over the
  state-dict names (``lm_head.weight`` included) minus the two ``embed_tokens`` aliases.
  """
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  with torch.device("meta"):
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, **kwargs))
  return sum(v.numel() for k, v in model.state_dict().items()
             if not k.endswith("embed_tokens.weight"))


@pytest.mark.parametrize("gin_file,hf,published", [
    ("models/t5/t5_1_1_base.gin", dict(vocab_size=32128, d_model=768, d_ff=2048, num_heads=12,
                                       d_kv=64, num_layers=12), 247_577_856),
    ("models/t5/t5_1_1_large.gin", dict(vocab_size=32128, d_model=1024, d_ff=2816, num_heads=16,
                                        d_kv=64, num_layers=24), 783_150_080),
])
def test_t5_1_1_counts_match_hf(gin_file, hf, published):
  spec = _spec(gin_file)
  count = _count(spec)
  assert count == _hf_count(**hf) == closed_form(spec.config) == published


@pytest.mark.parametrize("name", ["t5_1_1_tiny", "t5_1_1_small", "t5_1_1_xl", "t5_1_1_xxl",
                                  "ul2_20b", "ul2_32b_palix"])
def test_every_gin_file_matches_the_closed_form(name):
  spec = _spec(f"models/t5/{name}.gin")
  assert _count(spec) == closed_form(spec.config)


def test_ul2_32b_palix_is_the_32b_reading():
  c = _spec("models/t5/ul2_32b_palix.gin").config
  assert (c.emb_dim, c.mlp_dim, c.num_heads, c.head_dim) == (4096, 16384, 16, 256)
  assert (c.num_encoder_layers, c.num_decoder_layers, c.vocab_size) == (50, 50, 250_112)
  assert not c.logits_via_embedding and c.scan
  # 2 * 250112 * 4096 + 50 * (4 * 4096**2 + 3 * 4096 * 16384 + 2 * 4096)
  #   + 50 * (8 * 4096**2 + 3 * 4096 * 16384 + 3 * 4096) + 2 * 32 * 16 + 2 * 4096
  assert closed_form(c) == 32_248_939_520
  assert abs(closed_form(c) - 32.2e9) / 32.2e9 < 0.01


def test_palix_params_cli_on_t5(capsys):
  gin.clear_config()
  try:
    assert cli_main.main(["params", "--gin_file=models/t5/t5_1_1_small.gin"]) == 0
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert out.strip().splitlines()[-1] == "total_params: 76961152"
  for module in ("token_embedder", "encoder", "decoder", "logits_dense"):
    assert module in out
