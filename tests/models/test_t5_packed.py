"""T5 on packed rows (T5X's packing): every packed example gets the logits it gets alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.models.t5 import T5Config, T5EncoderDecoder

CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=12)
# Three examples: (encoder tokens, target tokens), EOS = 1 last.
EXAMPLES = [([5, 6, 7, 8, 9, 1], [4, 5, 6, 1]),
            ([9, 3, 1], [7, 1]),
            ([11, 12, 13, 14, 15, 16, 17, 18, 1], [8, 9, 10, 11, 12, 1])]
ENC_LEN, DEC_LEN = 24, 16


def _shift_right(targets):
  return [0] + targets[:-1]


def _pack(examples):
  """One row holding ``examples`` back to back, segment ids 1.., positions per segment."""
  row = {k: np.zeros((1, ENC_LEN), np.int32) for k in ("enc", "enc_seg", "enc_pos")}
  row.update({k: np.zeros((1, DEC_LEN), np.int32) for k in ("dec_in", "dec_seg", "dec_pos")})
  e = d = 0
  for s, (inputs, targets) in enumerate(examples, start=1):
    row["enc"][0, e:e + len(inputs)] = inputs
    row["enc_seg"][0, e:e + len(inputs)] = s
    row["enc_pos"][0, e:e + len(inputs)] = np.arange(len(inputs))
    row["dec_in"][0, d:d + len(targets)] = _shift_right(targets)
    row["dec_seg"][0, d:d + len(targets)] = s
    row["dec_pos"][0, d:d + len(targets)] = np.arange(len(targets))
    e, d = e + len(inputs), d + len(targets)
  return row


@pytest.fixture(scope="module")
def model():
  module = T5EncoderDecoder(CONFIG)
  enc = np.ones((1, ENC_LEN), np.int32)
  params = module.init(jax.random.PRNGKey(0), enc, np.ones((1, DEC_LEN), np.int32))["params"]
  # Larger relative-position and embedding weights than the init, so positions matter.
  params = jax.tree.map(lambda x: x * 3.0, params)

  def alone(p, enc, dec_in):
    return module.apply({"params": p}, enc, dec_in)

  def packed(p, row):
    embeds = module.apply({"params": p}, row["enc"], method=module.embed)
    encoded = module.apply({"params": p}, embeds, row["enc_seg"] > 0, positions=row["enc_pos"],
                           segment_ids=row["enc_seg"], method=module.encode)
    return module.apply({"params": p}, encoded, row["enc_seg"] > 0, row["dec_in"],
                        decoder_segment_ids=row["dec_seg"], decoder_positions=row["dec_pos"],
                        encoder_segment_ids=row["enc_seg"], method=module.decode)

  return params, jax.jit(alone), jax.jit(packed)


def test_packed_row_gives_each_example_its_own_logits(model):
  params, alone, packed = model
  row = _pack(EXAMPLES)
  logits = np.asarray(packed(params, row))[0]
  start = 0
  for inputs, targets in EXAMPLES:
    enc = np.zeros((1, ENC_LEN), np.int32)
    enc[0, :len(inputs)] = inputs
    dec = np.zeros((1, DEC_LEN), np.int32)
    dec[0, :len(targets)] = _shift_right(targets)
    expected = np.asarray(alone(params, enc, dec))[0, :len(targets)]
    # fp32: agreement to 1e-5 of the logits' scale (they reach ~15 with these weights).
    np.testing.assert_allclose(logits[start:start + len(targets)], expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    start += len(targets)


def test_segments_do_not_see_each_other(model):
  """Changing the first example's tokens leaves the second's logits exactly unchanged, and
  without segment ids (one long sequence) they would change."""
  params, _, packed = model
  row = _pack(EXAMPLES[:2])
  other = _pack([([20, 21, 22, 23, 24, 1], [30, 31, 32, 1]), EXAMPLES[1]])
  second = slice(4, 6)
  a, b = np.asarray(packed(params, row)), np.asarray(packed(params, other))
  np.testing.assert_array_equal(a[0, second], b[0, second])
  joined = {**row, "enc_seg": (row["enc_seg"] > 0).astype(np.int32),
            "dec_seg": (row["dec_seg"] > 0).astype(np.int32)}
  joined_other = {**other, "enc_seg": joined["enc_seg"], "dec_seg": joined["dec_seg"]}
  assert not np.allclose(np.asarray(packed(params, joined))[0, second],
                         np.asarray(packed(params, joined_other))[0, second])


def test_packed_targets_need_encoder_segments(model):
  params, _, _ = model
  module = T5EncoderDecoder(CONFIG)
  row = _pack(EXAMPLES[:1])
  encoded = jnp.zeros((1, ENC_LEN, CONFIG.emb_dim))
  with pytest.raises(ValueError, match="encoder_segment_ids"):
    module.apply({"params": params}, encoded, row["enc_seg"] > 0, row["dec_in"],
                 decoder_segment_ids=row["dec_seg"], method=module.decode)
