"""palix.lora: which kernels get adapters, their shapes and logical axes, and the merge
``W + (alpha/r) A B`` against einsum re-derivations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from palix import lora
from palix.models.t5 import T5Config, T5EncoderDecoder

T5 = T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=24,
              num_encoder_layers=1, num_decoder_layers=2, relative_attention_num_buckets=8,
              relative_attention_max_distance=16)


@pytest.fixture(scope="module")
def boxed_t5():
  tokens = jnp.zeros((1, 4), jnp.int32)
  return jax.jit(lambda r: T5EncoderDecoder(T5).init(r, tokens, tokens))(
      jax.random.PRNGKey(0))["params"]


@pytest.mark.parametrize("shape, names, a, b", [
    ((16, 2, 4), ("embed", "heads", "kv"),  # a query projection: one input axis
     ((16, 3), ("embed", None)), ((3, 2, 4), (None, "heads", "kv"))),
    ((2, 4, 16), ("heads", "kv", "embed"),  # an attention output: heads and kv are the input
     ((2, 4, 3), ("heads", "kv", None)), ((3, 16), (None, "embed"))),
    ((5, 16, 24), ("layers", "embed", "mlp"),  # scanned: one adapter per layer
     ((5, 16, 3), ("layers", "embed", None)), ((5, 3, 24), ("layers", None, "mlp"))),
    ((4, 16, 24), ("expert", "embed", "mlp"),  # Soft MoE experts: one adapter per expert
     ((4, 16, 3), ("expert", "embed", None)), ((4, 3, 24), ("expert", None, "mlp"))),
])
def test_adapter_shapes_and_axes(shape, names, a, b):
  assert lora.adapter_shapes(shape, names, 3) == (a, b)


@pytest.mark.parametrize("names", [(None, None, "channels", "embed"), ("embed",),
                                   ("layers", "embed")])
def test_non_dense_kernels_are_refused(names):
  with pytest.raises(ValueError, match="is not a Dense kernel"):
    lora.adapter_shapes((8,) * len(names), names, 2, "x/kernel")


def test_merge_matches_einsum():
  rng = np.random.RandomState(0)
  out = rng.randn(3, 2, 4, 16).astype(np.float32)  # scanned [layers, heads, kv, embed]
  query = rng.randn(16, 2, 4).astype(np.float32)
  a_out, b_out = rng.randn(3, 2, 4, 5).astype(np.float32), rng.randn(3, 5, 16).astype(np.float32)
  a_q, b_q = rng.randn(16, 5).astype(np.float32), rng.randn(5, 2, 4).astype(np.float32)
  params = {"x": {"out": {"kernel": out}, "query": {"kernel": query}, "norm": np.ones(3)}}
  adapters = {"x": {"out": {"kernel": {"lora_a": a_out, "lora_b": b_out}},
                    "query": {"kernel": {"lora_a": a_q, "lora_b": b_q}}}}
  merged = lora.merge(params, adapters, 0.25)
  np.testing.assert_allclose(merged["x"]["out"]["kernel"],
                             out + 0.25 * np.einsum("lhkr,lrd->lhkd", a_out, b_out), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(merged["x"]["query"]["kernel"],
                             query + 0.25 * np.einsum("dr,rhk->dhk", a_q, b_q), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(merged["x"]["norm"], params["x"]["norm"])
  bf16 = {"x": {"query": {"kernel": query.astype(ml_dtypes.bfloat16)}}}
  got = lora.merge(bf16, {"x": {"query": adapters["x"]["query"]}}, 0.25)["x"]["query"]["kernel"]
  assert got.dtype == ml_dtypes.bfloat16
  expected = (query.astype(ml_dtypes.bfloat16).astype(np.float32)
              + 0.25 * np.einsum("dr,rhk->dhk", a_q, b_q)).astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(np.asarray(got, np.float32), expected.astype(np.float32))


def test_init_selects_by_regex_and_starts_at_the_base(boxed_t5):
  config = lora.LoraConfig(targets=("decoder/.*/self_attention/(query|value)/kernel",
                                    "logits_dense/kernel"), rank=3, alpha=6.0)
  adapters = lora.init_adapters(jax.random.PRNGKey(1), boxed_t5, config)
  assert lora.adapted_paths(nn.meta.unbox(adapters)) == (
      "decoder/layers_0/self_attention/query/kernel", "decoder/layers_0/self_attention/value/kernel",
      "decoder/layers_1/self_attention/query/kernel", "decoder/layers_1/self_attention/value/kernel",
      "logits_dense/kernel")
  specs = traverse_util.flatten_dict(nn.get_partition_spec(adapters), sep="/")
  assert tuple(specs["logits_dense/kernel/lora_a"]) == ("embed", None)
  assert tuple(specs["logits_dense/kernel/lora_b"]) == (None, "vocab")
  flat = traverse_util.flatten_dict(nn.meta.unbox(adapters), sep="/")
  a = np.asarray(flat["decoder/layers_1/self_attention/query/kernel/lora_a"])
  assert a.shape == (16, 3) and 0.5 / 4 < a.std() < 2 / 4  # N(0, 1/fan_in), fan_in 16
  assert not np.asarray(flat["logits_dense/kernel/lora_b"]).any()  # B = 0: A B = 0 at first
  params = nn.meta.unbox(boxed_t5)
  merged = lora.merge(params, nn.meta.unbox(adapters), config.scale)
  jax.tree.map(np.testing.assert_array_equal, merged, params)


def test_bad_targets_are_named(boxed_t5):
  with pytest.raises(ValueError, match=r"targets \['encoder/.*/nothing'\] match no parameter"):
    lora.select_kernels(boxed_t5, lora.LoraConfig(targets=("encoder/.*/nothing",)))
  with pytest.raises(ValueError, match="'encoder/encoder_norm/scale' .* is not a Dense kernel"):
    lora.init_adapters(jax.random.PRNGKey(0), boxed_t5,
                       lora.LoraConfig(targets=("encoder/encoder_norm/scale",)))
  with pytest.raises(ValueError, match="rank must be a positive integer"):
    lora.LoraConfig(rank=0)
  with pytest.raises(ValueError, match="not a parameter of the base model"):
    lora.merge({"a": {"kernel": np.ones((2, 2))}},
               {"b": {"kernel": {"lora_a": np.ones((2, 1)), "lora_b": np.ones((1, 2))}}}, 1.0)


def test_gradients_follow_the_chain_rule_through_the_merged_kernel(boxed_t5):
  """For W' = W + s A B: dL/dA = s dL/dW' B^T and dL/dB = s A^T dL/dW', with dL/dW' taken on the
  plain T5 (A and B both non-zero), for a query [D, H, Dh] and an output [H, Dh, D] kernel."""
  params = nn.meta.unbox(boxed_t5)
  config = lora.LoraConfig(targets=("encoder/layers_0/attention/(query|out)/kernel",), rank=3,
                           alpha=1.5)
  rng = np.random.RandomState(0)
  adapters = jax.tree.map(lambda x: rng.randn(*np.shape(x)).astype(np.float32),
                          nn.meta.unbox(lora.init_adapters(jax.random.PRNGKey(0), boxed_t5,
                                                           config)))
  tokens = np.array([[3, 7, 9, 1]])

  def loss(p):
    return (T5EncoderDecoder(T5).apply({"params": p}, tokens, tokens) ** 2).mean()

  grads = jax.jit(jax.grad(lambda a: loss(lora.merge(params, a, config.scale))))(adapters)
  merged = lora.merge(params, adapters, config.scale)
  kernel_grads = jax.jit(jax.grad(loss))(merged)["encoder"]["layers_0"]["attention"]
  for name, num_in in (("query", 1), ("out", 2)):
    a = adapters["encoder"]["layers_0"]["attention"][name]["kernel"]["lora_a"]
    b = adapters["encoder"]["layers_0"]["attention"][name]["kernel"]["lora_b"]
    got = grads["encoder"]["layers_0"]["attention"][name]["kernel"]
    g = np.asarray(kernel_grads[name]["kernel"]).reshape(np.prod(a.shape[:num_in]), -1)
    a2, b2 = a.reshape(-1, 3), b.reshape(3, -1)
    np.testing.assert_allclose(np.asarray(got["lora_a"]).reshape(a2.shape),
                               config.scale * g @ b2.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["lora_b"]).reshape(b2.shape),
                               config.scale * a2.T @ g, rtol=1e-4, atol=1e-6)
