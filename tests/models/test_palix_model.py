"""PaLI-X model: masking equals dropping, batch invariance, scoring, freezing, bad input, scale."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from palix import decoding
from palix.models.palix_model import PaliX, PaliXConfig, PaliXModel
from palix.models.t5 import T5Config
from palix.models.vit import ParallelBlock, ViTConfig

VOCAB, LE, LD, IMG = 40, 8, 6, 16


def _config(**kw):
  vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8, image_size=IMG,
                  block=ParallelBlock, qk_norm=True, qkv_bias=False, norm_bias=False)
  t5 = T5Config(vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                num_encoder_layers=1, num_decoder_layers=1)
  return PaliXConfig(vit=vit, t5=t5, **kw)


@pytest.fixture(scope="module")
def model_and_params():
  model = PaliXModel(_config(max_images=3), image_size=IMG, num_images=2, max_input_len=LE,
                     max_target_len=LD)
  variables = model.get_initial_variables(jax.random.PRNGKey(0))
  return model, nn.meta.unbox(variables["params"])


def _batch(rng, b=2, n=2, prompt_lens=(3, 5), image_counts=None):
  images = rng.uniform(-1, 1, (b, n, IMG, IMG, 3)).astype(np.float32)
  mask = np.ones((b, n), np.int32)
  if image_counts is not None:
    for i, count in enumerate(image_counts):
      mask[i, count:] = 0
  tokens = np.zeros((b, LE), np.int32)
  for i, length in enumerate(prompt_lens[:b]):
    tokens[i, :length] = rng.integers(2, VOCAB, length)
  targets = rng.integers(2, VOCAB, (b, LD)).astype(np.int32)
  targets[:, -1] = 1
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)
  return dict(images=images, image_mask=mask, encoder_input_tokens=tokens,
              decoder_input_tokens=dec_in, decoder_target_tokens=targets,
              decoder_loss_weights=np.ones((b, LD), np.float32))


def _take(batch, rows, n=None):
  out = {k: v[rows] for k, v in batch.items()}
  if n is not None:
    out["images"], out["image_mask"] = out["images"][:, :n], out["image_mask"][:, :n]
  return out


def test_masking_an_image_equals_dropping_it(model_and_params):
  model, params = model_and_params
  batch = _batch(np.random.default_rng(0), b=1, image_counts=[1])
  masked = model.compute_logits(params, batch)
  dropped = model.compute_logits(params, _take(batch, slice(0, 1), n=1))
  np.testing.assert_allclose(masked, dropped, atol=1e-5)
  # And the mask really matters: unmasking the second image changes the output.
  unmasked = dict(batch, image_mask=np.ones_like(batch["image_mask"]))
  assert np.abs(model.compute_logits(params, unmasked) - masked).max() > 1e-3


def test_visual_tokens_are_n_times_k(model_and_params):
  model, params = model_and_params
  batch = _batch(np.random.default_rng(1))
  encoded, mask = model.encode(params, batch)
  k = (IMG // 8) ** 2
  assert encoded.shape == (2, 2 * k + LE, 32) and mask.shape == (2, 2 * k + LE)


def test_decoding_is_batch_invariant(model_and_params):
  model, params = model_and_params
  batch = _batch(np.random.default_rng(2), b=3, prompt_lens=(2, 7, 4), image_counts=[2, 1, 2])
  together, aux = model.predict_batch_with_aux(params, batch, eos_id=-1)
  for i in range(3):
    alone, aux_alone = model.predict_batch_with_aux(params, _take(batch, slice(i, i + 1)), eos_id=-1)
    np.testing.assert_array_equal(alone[0], together[i])
    np.testing.assert_allclose(aux_alone["logprobs"][0], aux["logprobs"][i], atol=1e-4)


def test_cached_greedy_equals_uncached_argmax(model_and_params):
  model, params = model_and_params
  batch = _batch(np.random.default_rng(3))
  tokens, aux = model.predict_batch_with_aux(params, batch, eos_id=-1)
  # Recompute every step without a cache, feeding back the argmax.
  dec = np.zeros((2, LD), np.int32)
  for t in range(LD):
    logits = model.compute_logits(params, dict(batch, decoder_input_tokens=dec))
    nxt = np.asarray(jnp.argmax(logits[:, t], -1))
    np.testing.assert_array_equal(nxt, tokens[:, t])
    if t + 1 < LD:
      dec[:, t + 1] = nxt
  logp = jax.nn.log_softmax(logits, -1)
  expected = np.take_along_axis(np.asarray(logp), np.asarray(tokens)[..., None], -1)[..., 0]
  np.testing.assert_allclose(aux["logprobs"], expected, atol=1e-4)


def test_beam_one_and_top_k_one_equal_greedy(model_and_params):
  model, params = model_and_params
  batch = _batch(np.random.default_rng(4))
  greedy, _ = model.predict_batch_with_aux(params, batch, eos_id=-1)
  beam, _ = model.predict_batch_with_aux(params, batch, decode_fn=decoding.beam_search,
                                         beam_size=1, eos_id=-1)
  topk, _ = model.predict_batch_with_aux(params, batch, jax.random.PRNGKey(0),
                                         decode_fn=decoding.temperature_sample, top_k=1,
                                         eos_id=-1)
  np.testing.assert_array_equal(beam, greedy)
  np.testing.assert_array_equal(topk, greedy)


def test_score_batch_ranks_the_trained_target_first():
  model = PaliXModel(_config(), image_size=IMG, num_images=1, max_input_len=LE, max_target_len=LD)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(1))["params"])
  rng = np.random.default_rng(5)
  batch = _batch(rng, n=1)
  opt = optax.adam(5e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state

  for _ in range(40):
    params, state = step(params, state)
  score = jax.jit(model.score_batch)
  true_scores = score(params, batch)
  for seed in range(3):
    corrupted = dict(batch)
    bad = np.random.default_rng(seed + 10).integers(2, VOCAB, batch["decoder_target_tokens"].shape)
    corrupted["decoder_target_tokens"] = bad.astype(np.int32)
    corrupted["decoder_input_tokens"] = np.concatenate(
        [np.zeros((2, 1), np.int32), bad[:, :-1].astype(np.int32)], axis=1)
    assert np.all(np.asarray(true_scores) > np.asarray(score(params, corrupted)))
  # score_batch is the weighted sum of target log-likelihoods under the loss's logits.
  logits = jax.jit(model.compute_logits)(params, batch)
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  ref = np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0].sum(-1)
  np.testing.assert_allclose(true_scores, ref, rtol=1e-5)


def test_frozen_vit_gets_no_gradient():
  model = PaliXModel(_config(freeze_vit=True), image_size=IMG, num_images=1, max_input_len=LE,
                     max_target_len=LD)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(2))["params"])
  batch = _batch(np.random.default_rng(6), n=1)
  grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["vit"]))
  assert float(jnp.abs(grads["projection"]["kernel"]).max()) > 0
  assert model.frozen_param_prefixes() == ("vit",)


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b.pop("decoder_target_tokens"), "decoder_target_tokens"),
    (lambda b: b.update(image_mask=b["image_mask"][:, :1]), "image_mask"),
    (lambda b: b.update(encoder_input_tokens=np.ones((2, LE + 3), np.int32)), "max_input_len"),
    (lambda b: b.update(images=b["images"][:, 0]), "[batch, num_images, height, width, 3]"),
])
def test_bad_batches_name_the_key(model_and_params, mutate, message):
  model, params = model_and_params
  batch = _batch(np.random.default_rng(7))
  mutate(batch)
  with pytest.raises((KeyError, ValueError), match=message.replace("[", r"\[").replace("]", r"\]")):
    model.loss_fn(params, batch, None)


def test_palix_55b_parameter_count():
  out = subprocess.run([sys.executable, "-m", "palix.cli.main", "params",
                        "--gin_file=gin/models/palix/palix_55b.gin"],
                       capture_output=True, text=True, check=True).stdout
  lines = out.strip().splitlines()
  total = int(lines[-1].split(":")[1])
  assert 53e9 <= total <= 57e9, out
  by_module = {l.split()[0]: int(l.split()[1].replace(",", "")) for l in lines[1:]
               if len(l.split()) == 3 and l.split()[1].replace(",", "").isdigit()}
  assert 21.6e9 <= by_module["vit"] <= 21.8e9, out
  assert 31.5e9 <= by_module["text"] <= 33e9, out
