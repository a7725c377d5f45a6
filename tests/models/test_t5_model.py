"""T5EncoderDecoder: decode-step/teacher-forcing agreement, masking, scan, cache contract, errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.models.t5 import T5Config, T5EncoderDecoder

TINY = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                relative_attention_max_distance=12)
ENC = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1, 0, 0],
                [9, 3, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
DEC = np.array([[0, 4, 5, 6, 2, 8, 9, 10, 11, 12, 13, 1],
                [0, 7, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
ALLOWED_AXES = {"vocab", "embed", "heads", "kv", "mlp", "relpos_buckets", "layers"}


def _random_params(module, seed=0):
  """Random parameters of the right scale for every leaf (norm scales away from 1).

  Built from ``jax.eval_shape`` rather than ``module.init``: compiling init's random number
  generation costs more than everything else in this file.
  """
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), ENC, DEC)["params"])
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    if "scale" in name:
      return 1.0 + 0.2 * x
    if "token_embedder" in name or "rel_embedding" in name:
      return x
    # Kernels may carry a leading scan axis: [.., D, H, Dh] (q/k/v), [.., H, Dh, D] (out),
    # [.., in, out] (dense).
    if "['out']" in name:
      fan_in = leaf.shape[-3] * leaf.shape[-2]
    elif any(f"['{n}']" in name for n in ("query", "key", "value")):
      fan_in = leaf.shape[-3]
    else:
      fan_in = leaf.shape[-2]
    return x / np.sqrt(fan_in)

  return jax.tree_util.tree_map_with_path(fill, shapes)


class Fns:
  """Jitted pieces of one configured module (compiled once per test module)."""

  def __init__(self, config):
    self.module = m = T5EncoderDecoder(config)
    self.params = _random_params(m)
    self.call = jax.jit(lambda p, e, d: m.apply({"params": p}, e, d))
    self.encode = jax.jit(lambda p, e, mask: m.apply(
        {"params": p}, m.apply({"params": p}, e, method=m.embed), mask, method=m.encode))
    self.embed = jax.jit(lambda p, t: m.apply({"params": p}, t, method=m.embed))
    self.encode_embeds = jax.jit(
        lambda p, x, mask: m.apply({"params": p}, x, mask, method=m.encode))
    self.decode = jax.jit(lambda p, x, mask, d: m.apply({"params": p}, x, mask, d, method=m.decode))
    self.init_cache = jax.jit(lambda p, x, mask: m.apply({"params": p}, x, mask, DEC.shape[1],
                                                         method=m.init_decode_cache))
    self.step = jax.jit(lambda p, c, t, i: m.apply({"params": p}, c, t, i, method=m.decode_step))

  def step_all(self, tokens, cache, params=None):
    params = self.params if params is None else params
    logits = []
    for i in range(tokens.shape[1]):
      out, cache = self.step(params, cache, tokens[:, i:i + 1], jnp.int32(i))
      logits.append(out)
    return np.stack(logits, axis=1), cache


@pytest.fixture(scope="module")
def fns():
  return Fns(TINY)


@pytest.fixture(scope="module")
def scanned():
  return Fns(dataclasses.replace(TINY, scan=True, remat=True))


def test_decode_steps_reproduce_teacher_forcing(fns):
  encoded = fns.encode(fns.params, ENC, ENC > 0)
  logits = np.asarray(fns.decode(fns.params, encoded, ENC > 0, DEC))
  np.testing.assert_allclose(logits, np.asarray(fns.call(fns.params, ENC, DEC)), atol=1e-6)
  stepped, cache = fns.step_all(DEC, fns.init_cache(fns.params, encoded, ENC > 0))
  assert stepped.shape == logits.shape == (2, DEC.shape[1], TINY.vocab_size)
  assert stepped.dtype == np.float32
  np.testing.assert_allclose(stepped, logits, atol=1e-5, rtol=0)
  assert np.abs(np.asarray(cache["self_key"])).min(axis=(1, 3, 4)).all()  # every step written


def test_greedy_steps_equal_argmax_of_recomputation(fns):
  encoded = fns.encode(fns.params, ENC, ENC > 0)
  cache = fns.init_cache(fns.params, encoded, ENC > 0)
  length = DEC.shape[1]
  tokens = np.zeros((2, length + 1), np.int32)  # BOS = 0
  for i in range(length):
    logits, cache = fns.step(fns.params, cache, tokens[:, i:i + 1], jnp.int32(i))
    tokens[:, i + 1] = np.argmax(np.asarray(logits), axis=-1)
  recomputed = np.asarray(fns.decode(fns.params, encoded, ENC > 0, tokens[:, :length]))
  np.testing.assert_array_equal(np.argmax(recomputed, axis=-1), tokens[:, 1:])


def test_scan_matches_unrolled_and_its_steps(fns, scanned):
  stack = lambda *xs: np.stack(xs)  # noqa: E731
  params = dict(fns.params)
  for name, n in (("encoder", 2), ("decoder", 2)):
    sub = {k: v for k, v in params[name].items() if not k.startswith("layers_")}
    sub["layers"] = jax.tree_util.tree_map(stack, *[params[name][f"layers_{i}"] for i in range(n)])
    params[name] = sub
  expected = np.asarray(fns.call(fns.params, ENC, DEC))
  np.testing.assert_allclose(np.asarray(scanned.call(params, ENC, DEC)), expected, atol=1e-5)
  encoded = scanned.encode(params, ENC, ENC > 0)
  stepped, _ = scanned.step_all(DEC, scanned.init_cache(params, encoded, ENC > 0), params)
  np.testing.assert_allclose(stepped, expected, atol=1e-5)


def test_decoder_padding_never_affects_earlier_positions(fns):
  changed = DEC.copy()
  changed[:, 6:] = [[3, 3, 3, 3, 3, 3], [50, 51, 52, 53, 54, 55]]
  a, b = np.asarray(fns.call(fns.params, ENC, DEC)), np.asarray(fns.call(fns.params, ENC, changed))
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_encoder_padding_is_ignored(fns):
  """Padded encoder positions (10 of 14 in the second row) may hold anything: same logits."""
  p = fns.params
  embeds = np.asarray(fns.embed(p, ENC))
  noise = 5.0 * np.random.RandomState(3).randn(*embeds.shape).astype(np.float32)
  noisy = np.where((ENC > 0)[..., None], embeds, noise)
  logits = np.asarray(fns.decode(p, fns.encode_embeds(p, noisy, ENC > 0), ENC > 0, DEC))
  np.testing.assert_allclose(logits, np.asarray(fns.call(p, ENC, DEC)), atol=1e-4, rtol=1e-4)


def test_cache_is_batch_leading_so_beams_can_gather_it(fns):
  """Gathering every cache leaf on axis 0 mid-decode equals decoding the gathered batch."""
  encoded = fns.encode(fns.params, ENC, ENC > 0)
  cache = fns.init_cache(fns.params, encoded, ENC > 0)
  for leaf in jax.tree_util.tree_leaves(cache):
    assert leaf.shape[0] == 2
  _, cache = fns.step_all(DEC[:, :5], cache)
  for order in (np.array([1, 0]), np.array([0, 0])):  # a reordering and a beam copy
    gathered = jax.tree_util.tree_map(lambda x, order=order: x[order], cache)
    logits = []
    for i in range(5, DEC.shape[1]):
      out, gathered = fns.step(fns.params, gathered, DEC[order, i:i + 1], jnp.int32(i))
      logits.append(np.asarray(out))
    expected = np.asarray(fns.call(fns.params, ENC[order], DEC[order]))[:, 5:]
    np.testing.assert_allclose(np.stack(logits, 1), expected, atol=1e-5)


def test_relative_positions_run_over_prepended_embeddings(fns):
  """encode() sees positions over the whole input: prepending a token shifts later outputs."""
  p = fns.params
  embeds = np.asarray(fns.embed(p, ENC))
  prefix = np.random.RandomState(4).randn(2, 3, 32).astype(np.float32)
  joined = np.concatenate([prefix, embeds], axis=1)
  mask = np.concatenate([np.ones((2, 3), bool), ENC > 0], axis=1)
  encoded = np.asarray(fns.encode_embeds(p, joined, mask))
  alone = np.asarray(fns.encode_embeds(p, embeds, ENC > 0))
  assert encoded.shape == (2, 17, 32)
  assert np.abs(encoded[:, 3:] - alone).max() > 1e-3  # the visual prefix is attended to


def test_positions_make_masked_slots_disappear(fns):
  """With ``positions = cumsum(mask) - 1`` a masked-out inserted token changes nothing (PaLI-X's
  dropped image slots); shifting all positions by a constant changes nothing either."""
  m, p = fns.module, fns.params
  encode = jax.jit(lambda p, x, mask, pos: m.apply({"params": p}, x, mask, positions=pos,
                                                   method=m.encode))
  embeds = np.asarray(fns.embed(p, ENC))
  inserted = np.concatenate([embeds[:, :3], np.full((2, 1, 32), 7.0, np.float32), embeds[:, 3:]], 1)
  mask = np.concatenate([ENC[:, :3] > 0, np.zeros((2, 1), bool), ENC[:, 3:] > 0], 1)
  positions = np.cumsum(mask, axis=1) - 1
  alone = np.asarray(fns.encode_embeds(p, embeds, ENC > 0))
  got = np.asarray(encode(p, inserted, mask, positions))
  keep = np.r_[0:3, 4:15]
  real = ENC > 0
  np.testing.assert_allclose(got[:, keep][real], alone[real], atol=1e-4, rtol=1e-4)
  shifted = np.asarray(encode(p, inserted, mask, positions + 7))
  np.testing.assert_allclose(shifted[:, keep][real], alone[real], atol=1e-4, rtol=1e-4)


def test_tied_logits_use_scaled_embedding(fns):
  m = T5EncoderDecoder(dataclasses.replace(TINY, logits_via_embedding=True))
  params = {k: v for k, v in fns.params.items() if k != "logits_dense"}
  assert "logits_dense" not in jax.eval_shape(m.init, jax.random.PRNGKey(0), ENC, DEC)["params"]
  logits = np.asarray(jax.jit(lambda p: m.apply({"params": p}, ENC, DEC))(params))
  # Same network with an explicit logits kernel equal to embedding.T / sqrt(d_model).
  kernel = params["token_embedder"]["embedding"].T / np.sqrt(32)
  untied = dict(params, logits_dense={"kernel": kernel})
  np.testing.assert_allclose(np.asarray(fns.call(untied, ENC, DEC)), logits, atol=1e-5)


def test_logical_axis_names_on_every_param():
  for config in (TINY, dataclasses.replace(TINY, scan=True)):
    boxed = jax.eval_shape(lambda: T5EncoderDecoder(config).init(jax.random.PRNGKey(0), ENC, DEC))
    specs = nn.get_partition_spec(boxed["params"])
    flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: x is None or isinstance(
        x, jax.sharding.PartitionSpec))
    for path, spec in flat:
      name = jax.tree_util.keystr(path)
      assert spec is not None and len(spec) > 0, name
      assert set(spec) <= ALLOWED_AXES, (name, spec)
      assert ("layers" in spec) == (config.scan and "layers" in name and "relpos" not in name), name


def test_dropout_needs_rng_and_is_off_when_deterministic():
  # The encoder of a one-layer model: dropout masks are slow to compile on CPU, so few of them.
  m = T5EncoderDecoder(dataclasses.replace(TINY, dropout_rate=0.3, num_encoder_layers=1))
  p = _random_params(m)
  x = np.random.RandomState(5).randn(2, ENC.shape[1], 32).astype(np.float32)

  @jax.jit
  def run(p, rng):
    default = m.apply({"params": p}, x, ENC > 0, method=m.encode)
    dropped = m.apply({"params": p}, x, ENC > 0, method=m.encode, deterministic=False,
                      rngs={"dropout": rng})
    return default, dropped

  # ``default`` ran without a dropout rng, so it was deterministic.
  default, dropped = (np.asarray(v) for v in run(p, jax.random.key(1, impl="rbg")))
  assert np.abs(dropped - default).max() > 1e-2
  with pytest.raises(Exception, match="dropout"):  # flax: no 'dropout' rng given
    m.apply({"params": p}, x, ENC > 0, method=m.encode, deterministic=False)


def test_bfloat16_compute_gives_float32_logits(fns):
  m = T5EncoderDecoder(dataclasses.replace(TINY, dtype="bfloat16"))
  logits = np.asarray(jax.jit(lambda p: m.apply({"params": p}, ENC, DEC))(fns.params))
  assert logits.dtype == np.float32
  np.testing.assert_allclose(logits, np.asarray(fns.call(fns.params, ENC, DEC)), atol=0.5)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_shapes_name_the_argument(fns):
  """Checked while tracing, so ``jax.eval_shape`` finds them without running anything."""
  m, p = fns.module, fns.params
  x = np.zeros((2, 5, 32), np.float32)

  def apply(*args, method):
    return lambda: jax.eval_shape(lambda: m.apply({"params": p}, *args, method=method))

  cases = [
      (apply(x[0], np.ones((5,)), method=m.encode), "input_embeds"),
      (apply(np.zeros((2, 5, 31)), np.ones((2, 5)), method=m.encode),
       r"input_embeds must have shape \[batch, length, 32\]"),
      (apply(x, np.ones((2, 4)), method=m.encode), "input_mask"),
      (lambda: jax.eval_shape(lambda: m.apply({"params": p}, x, np.ones((2, 5)),
                                              positions=np.zeros((2, 4), np.int32),
                                              method=m.encode)), r"positions must have shape"),
      (apply(x, np.ones((2, 4)), DEC, method=m.decode), "encoder_mask"),
      (apply(x, np.ones((2, 5)), DEC[0], method=m.decode), "decoder_input_tokens"),
      (apply(x, np.ones((2, 5)), DEC[:1], method=m.decode),
       r"decoder_input_tokens must have shape \[batch=2, length\]"),
      (apply(x, np.ones((2, 5)), 0, method=m.init_decode_cache), "max_decode_len"),
      (apply(DEC[0], method=m.embed), r"tokens must have shape \[batch, length\]"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()
  cache = apply(x, np.ones((2, 5)), 4, method=m.init_decode_cache)()
  with pytest.raises(ValueError, match=r"tokens must have shape \[batch=2, 1\]"):
    apply(cache, DEC[:, :2], 0, method=m.decode_step)()
  with pytest.raises(ValueError, match="step 4 is outside"):
    apply(cache, DEC[:, :1], 4, method=m.decode_step)()
  with pytest.raises(ValueError, match="step must be a scalar"):
    apply(cache, DEC[:, :1], np.zeros(2, np.int32), method=m.decode_step)()


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match="T5Config.head_dim"):
    T5Config(head_dim=0).validate()
  with pytest.raises(ValueError, match="T5Config.remat_policy"):
    T5Config(remat_policy="everything").validate()
  with pytest.raises(ValueError, match="max_distance"):
    T5Config(relative_attention_max_distance=8).validate()


@pytest.mark.slow
def test_remat_keeps_gradients_unrolled_and_scanned(fns, scanned):
  """Rematerialisation changes memory, not gradients (unrolled and scanned layers)."""

  def grads(config, params):
    m = T5EncoderDecoder(config)
    loss = lambda p: jnp.mean(jax.nn.log_softmax(m.apply({"params": p}, ENC, DEC))[..., 3])  # noqa
    return jax.jit(jax.grad(loss))(params)

  for base, params in ((TINY, fns.params),
                       (dataclasses.replace(TINY, scan=True), scanned.params)):
    plain = grads(base, params)
    remat = grads(dataclasses.replace(base, remat=True), params)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
