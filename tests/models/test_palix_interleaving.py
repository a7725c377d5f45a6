"""Interleaved few-shot prompts on the encoder side: ``img_1 text_1 ... img_k text_k query``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.models.palix_model import PaliX, PaliXConfig, PaliXModel, interleaved_order
from palix.models.t5 import T5Config
from palix.models.vit import ParallelBlock, ViTConfig

VOCAB, LE, LD, IMG, SEP = 40, 12, 5, 16, 7
PATCHES = (IMG // 8) ** 2


def _config(separator):
  vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8, image_size=IMG,
                  block=ParallelBlock, qk_norm=True, qkv_bias=False, norm_bias=False)
  t5 = T5Config(vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                num_encoder_layers=2, num_decoder_layers=1)
  return PaliXConfig(vit=vit, t5=t5, max_images=3, segment_separator_id=separator)


@pytest.fixture(scope="module")
def models():
  kw = dict(image_size=IMG, num_images=3, max_input_len=LE, max_target_len=LD)
  interleaving = PaliXModel(_config(SEP), **kw)
  plain = PaliXModel(_config(None), **kw)
  params = nn.meta.unbox(interleaving.get_initial_variables(jax.random.PRNGKey(0))["params"])
  return interleaving, plain, params


def _batch(rng, segments, image_counts):
  """Each row: ``segments[i]`` lists the lengths of its text segments (each ends in SEP but the
  last, which ends in EOS)."""
  b = len(segments)
  tokens = np.zeros((b, LE), np.int32)
  for row, lengths in enumerate(segments):
    text = []
    for j, length in enumerate(lengths):
      text += list(rng.integers(SEP + 1, VOCAB, length - 1)) + [SEP if j < len(lengths) - 1 else 1]
    tokens[row, :len(text)] = text
  mask = np.zeros((b, 3), np.int32)
  for row, count in enumerate(image_counts):
    mask[row, :count] = 1
  targets = rng.integers(2, VOCAB, (b, LD)).astype(np.int32)
  return dict(images=rng.uniform(-1, 1, (b, 3, IMG, IMG, 3)).astype(np.float32), image_mask=mask,
              encoder_input_tokens=tokens, decoder_target_tokens=targets,
              decoder_input_tokens=np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1),
              decoder_loss_weights=np.ones((b, LD), np.float32))


def _reference_order(image_mask, tokens, patches, separator):
  """The documented rule, written out element by element."""
  n, length = len(image_mask), len(tokens)
  segments, current = [], []
  for t, token in enumerate(tokens):
    if token == 0:
      continue
    current.append(n * patches + t)
    if token == separator:
      segments.append(current)
      current = []
  if current:
    segments.append(current)
  valid = [i for i in range(n) if image_mask[i]]
  first_with_image = len(valid) - len(segments)
  order = [x for j in range(min(0, first_with_image) * -1) for x in segments[j]]
  for rank, image in enumerate(valid):
    order += [image * patches + p for p in range(patches)]
    j = rank - first_with_image
    if 0 <= j < len(segments):
      order += segments[j]
  rest = [i for i in range(n * patches + length) if i not in order]
  return order, rest


@pytest.mark.parametrize("mask,segments", [
    ((1, 1, 1), (3, 2, 4)),       # 2-shot: each image followed by its segment
    ((1, 1, 1), (5,)),            # one segment: after all images, as without interleaving
    ((1, 0, 1), (3, 4)),          # a masked image is skipped
    ((1, 0, 0), (2, 2, 3)),       # more segments than images: leading ones go first
    ((0, 0, 0), (4,)),            # text only
])
def test_order_matches_the_documented_rule(mask, segments):
  batch = _batch(np.random.default_rng(0), [segments], [sum(mask)])
  batch["image_mask"] = np.array([mask], np.int32)
  order = np.asarray(interleaved_order(jnp.asarray(batch["image_mask"]),
                                       jnp.asarray(batch["encoder_input_tokens"]), PATCHES, SEP))[0]
  assert sorted(order.tolist()) == list(range(3 * PATCHES + LE))  # a permutation
  expected_real, expected_rest = _reference_order(mask, batch["encoder_input_tokens"][0], PATCHES,
                                                  SEP)
  assert order[:len(expected_real)].tolist() == expected_real
  assert sorted(order[len(expected_real):].tolist()) == sorted(expected_rest)


def test_single_segment_prompts_are_unchanged_by_interleaving(models):
  interleaving, plain, params = models
  batch = _batch(np.random.default_rng(1), [(4,), (7,)], [3, 2])
  np.testing.assert_allclose(interleaving.compute_logits(params, batch),
                             plain.compute_logits(params, batch), atol=2e-5)


def test_k_shot_encoding_equals_the_hand_built_sequence(models):
  """Independent of ``interleaved_order``: concatenate ``img_0 seg_0 img_1 seg_1 img_2 seg_2``
  by hand, with consecutive positions, and run the same towers on it."""
  interleaving, _, params = models
  batch = _batch(np.random.default_rng(2), [(3, 4, 3)], [3])
  logits = interleaving.compute_logits(params, batch)

  def manual(module, images, image_mask, tokens, decoder_input_tokens):
    visual, _ = module.embed_images(images, image_mask)
    text = module.text.embed(tokens)
    cuts = [0, 3, 7, 10]
    pieces = []
    for i in range(3):
      pieces += [visual[:, i * PATCHES:(i + 1) * PATCHES], text[:, cuts[i]:cuts[i + 1]]]
    embeds = jnp.concatenate(pieces, axis=1)
    mask = jnp.ones(embeds.shape[:2], bool)
    encoded = module.text.encode(embeds, mask, positions=jnp.arange(embeds.shape[1])[None])
    return module.decode(encoded, mask, decoder_input_tokens)

  expected = PaliX(interleaving.config).apply(
      {"params": params}, batch["images"], batch["image_mask"], batch["encoder_input_tokens"],
      batch["decoder_input_tokens"], method=manual)
  np.testing.assert_allclose(logits, expected, atol=2e-5)
  # The order matters: the flat layout (all images, then all text) gives different logits.
  _, plain, _ = models
  assert np.abs(plain.compute_logits(params, batch) - logits).max() > 1e-3


def test_interleaved_decoding_is_batch_invariant(models):
  interleaving, _, params = models
  batch = _batch(np.random.default_rng(3), [(3, 4, 3), (6,), (2, 5)], [3, 1, 2])
  together, _ = interleaving.predict_batch_with_aux(params, batch, eos_id=-1)
  for i in range(3):
    alone, _ = interleaving.predict_batch_with_aux(
        params, {k: v[i:i + 1] for k, v in batch.items()}, eos_id=-1)
    np.testing.assert_array_equal(alone[0], together[i])


def test_masking_a_shot_equals_dropping_it(models):
  """Masking shot 0's image and blanking its text equals the 1-shot prompt without it."""
  interleaving, _, params = models
  batch = _batch(np.random.default_rng(4), [(3, 4, 3)], [3])
  masked = dict(batch, image_mask=np.array([[0, 1, 1]], np.int32),
                encoder_input_tokens=np.where(np.arange(LE) < 3, 0, batch["encoder_input_tokens"]))
  dropped_tokens = np.zeros((1, LE), np.int32)
  dropped_tokens[0, :7] = batch["encoder_input_tokens"][0, 3:10]
  dropped = dict(batch, images=np.concatenate([batch["images"][:, 1:], batch["images"][:, :1]], 1),
                 image_mask=np.array([[1, 1, 0]], np.int32), encoder_input_tokens=dropped_tokens)
  # The frame embedding is per slot; give both the same slots by turning it off.
  no_frames = dict(params, frame_embedding=jnp.zeros_like(params["frame_embedding"]))
  np.testing.assert_allclose(interleaving.compute_logits(no_frames, masked),
                             interleaving.compute_logits(no_frames, dropped), atol=2e-5)
