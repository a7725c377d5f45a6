"""Decoding palix's T5 (KV cache via ``decode_step``) against teacher forcing and Hugging Face.

A random tiny HF ``T5ForConditionalGeneration`` is imported with ``palix.interop.hf_t5``; HF's
``generate`` (an independent implementation) is the reference for greedy and beam search.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix import decoding
from jitted import decode
from palix.interop import hf_t5
from palix.models.t5 import T5EncoderDecoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, d_model=32, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
            d_kv=8, dropout_rate=0.0, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
            eos_token_id=1, pad_token_id=0)
MAX_LEN = 10
# Prompts of different lengths, padded with 0 at the end (the T5 convention).
PROMPTS = [[5, 9, 17, 33, 2, 8, 41, 6], [7, 50, 22], [12, 3, 60, 44, 19], [30, 31]]
EOS_BOOST = 1.6  # scales the EOS row of lm_head so that some hypotheses end before MAX_LEN


def pad(prompts, length=None):
  length = length or max(map(len, prompts))
  out = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    out[i, :len(p)] = p
  return out


class T5Fixture:
  """The HF model and the palix module/params imported from it."""

  def __init__(self, seed=0):
    torch.manual_seed(seed)
    config = transformers.T5Config(tie_word_embeddings=False, **TINY)
    self.hf = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers 5 ties lm_head even for T5.1.1; give it its own matrix
      head = torch.randn(TINY["vocab_size"], TINY["d_model"])
      head[1] *= EOS_BOOST
      self.hf.lm_head.weight = torch.nn.Parameter(head)
    state = {k: v.detach().numpy().copy() for k, v in self.hf.state_dict().items()}
    self.config = hf_t5.t5_config_from_hf(self.hf.config)
    self.params = hf_t5.params_from_hf_state_dict(state, self.config)
    self.module = T5EncoderDecoder(self.config)
    self._encode = jax.jit(lambda p, t: self.module.apply(
        {"params": p}, t, method=lambda m, t: m.encode(m.embed(t), t > 0)))
    # One step function object: the jit caches of the decoders key on it.
    self._decode_step = functools.partial(self.module.apply, method=T5EncoderDecoder.decode_step)
    self._init_cache = jax.jit(lambda p, e, m, n: self.module.apply(
        {"params": p}, e, m, n, method=T5EncoderDecoder.init_decode_cache), static_argnums=3)

  def encode(self, tokens):
    return self._encode(self.params, tokens)

  def decoder_state(self, tokens, max_len=MAX_LEN):
    cache = self._init_cache(self.params, self.encode(tokens), tokens > 0, max_len)
    return jax.tree_util.Partial(self._decode_step, {"params": self.params}), cache

  def hf_generate(self, tokens, **kwargs):
    with torch.no_grad():
      return self.hf.generate(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                              attention_mask=torch.from_numpy(tokens > 0), do_sample=False,
                              max_new_tokens=MAX_LEN, **kwargs)


@pytest.fixture(scope="module")
def t5():
  return T5Fixture()


@pytest.fixture(scope="module")
def greedy_result(t5):
  step, cache = t5.decoder_state(pad(PROMPTS))
  return decode(decoding.greedy, step, cache, batch_size=len(PROMPTS), max_decode_len=MAX_LEN)


def hf_tokens(sequences):
  """HF output ``[N, 1 + n]`` (leading decoder start token 0) -> ``[N, MAX_LEN]``, 0 after EOS.

  HF's beam search fills finished hypotheses with EOS rather than pad (its fill value is
  ``pad_token_id or eos_token_id``, and pad 0 is falsy); palix writes 0 after EOS.
  """
  seqs = sequences.numpy()
  assert np.all(seqs[:, 0] == 0)
  out = np.zeros((len(seqs), MAX_LEN), np.int64)
  out[:, :seqs.shape[1] - 1] = seqs[:, 1:]
  after_eos = np.cumsum(np.cumsum(out == 1, axis=1), axis=1) > 1
  return np.where(after_eos, 0, out)


def test_cached_greedy_equals_teacher_forced_argmax(t5, greedy_result):
  """Uncached reference: rerun the full ``decode`` on the prefix at every step."""
  enc = pad(PROMPTS)
  encoded = t5.encode(enc)
  decode = jax.jit(lambda p, e, m, d: t5.module.apply({"params": p}, e, m, d,
                                                      method=T5EncoderDecoder.decode))
  inputs = np.zeros((len(PROMPTS), MAX_LEN), np.int32)  # BOS = 0, then the chosen tokens
  tokens = np.zeros_like(inputs)
  logprobs = np.zeros(inputs.shape, np.float32)
  done = np.zeros(len(PROMPTS), bool)
  for t in range(MAX_LEN):  # causal: position t only sees inputs[:, :t + 1]
    logits = np.asarray(decode(t5.params, encoded, enc > 0, inputs))[:, t]
    choice = np.where(done, 0, logits.argmax(-1))
    tokens[:, t] = choice
    logp = np.asarray(jax.nn.log_softmax(logits))
    logprobs[:, t] = np.where(done, 0.0, logp[np.arange(len(choice)), choice])
    done |= choice == 1
    if t + 1 < MAX_LEN:
      inputs[:, t + 1] = choice
  np.testing.assert_array_equal(greedy_result.tokens, tokens)
  np.testing.assert_allclose(greedy_result.logprobs, logprobs, rtol=1e-4, atol=1e-5)


def test_greedy_equals_hf_generate(t5, greedy_result):
  hf = t5.hf_generate(pad(PROMPTS), num_beams=1)
  np.testing.assert_array_equal(greedy_result.tokens, hf_tokens(hf))
  lengths = np.asarray(greedy_result.lengths)
  assert lengths.min() < MAX_LEN and lengths.max() == MAX_LEN  # EOS and truncation both occur


@pytest.mark.parametrize("beam_size,alpha,early_stopping", [(3, 1.0, True), (4, 0.5, False)])
def test_beam_search_equals_hf_generate(t5, beam_size, alpha, early_stopping):
  """Same procedure as HF when the penalty is HF's ``length ** alpha``."""
  enc = pad(PROMPTS)
  step, cache = t5.decoder_state(enc)
  ours = decode(decoding.beam_search, step, cache, batch_size=len(PROMPTS), beam_size=beam_size,
                max_decode_len=MAX_LEN, alpha=alpha, early_stopping=early_stopping,
                length_penalty=decoding.power_length_penalty)
  hf = t5.hf_generate(enc, num_beams=beam_size, num_return_sequences=beam_size,
                      length_penalty=alpha, early_stopping=True if early_stopping else "never",
                      output_scores=True, return_dict_in_generate=True)
  n = len(PROMPTS) * beam_size
  np.testing.assert_array_equal(np.asarray(ours.all_tokens).reshape(n, MAX_LEN),
                                hf_tokens(hf.sequences))
  np.testing.assert_allclose(np.asarray(ours.all_scores).reshape(n),
                             hf.sequences_scores.numpy(), rtol=1e-4, atol=1e-5)
  lengths = np.asarray(ours.all_lengths)
  assert lengths.min() < MAX_LEN  # some hypotheses ended with EOS


def test_min_new_tokens_equals_hf_generate(t5, greedy_result):
  """``min_new_tokens`` (and the ``max_new_tokens`` alias) as Hugging Face's ``generate``, greedy
  and beam search: EOS is forbidden before it, other tokens keep their log-probabilities."""
  enc = pad(PROMPTS)
  minimum = int(np.min(greedy_result.lengths)) + 2  # a row that ended earlier must go on
  assert minimum < MAX_LEN
  step, cache = t5.decoder_state(enc)
  greedy = decode(decoding.greedy, step, cache, batch_size=len(PROMPTS), max_new_tokens=MAX_LEN,
                  min_new_tokens=minimum)
  hf = t5.hf_generate(enc, num_beams=1, min_new_tokens=minimum)
  np.testing.assert_array_equal(greedy.tokens, hf_tokens(hf))
  assert int(np.min(greedy.lengths)) >= minimum
  beam = decode(decoding.beam_search, step, cache, batch_size=len(PROMPTS),
                max_new_tokens=MAX_LEN, min_new_tokens=minimum, **BEAM)
  hf = t5.hf_generate(enc, num_beams=3, num_return_sequences=3, length_penalty=1.0,
                      early_stopping=True, min_new_tokens=minimum, output_scores=True,
                      return_dict_in_generate=True)
  n = len(PROMPTS) * 3
  np.testing.assert_array_equal(np.asarray(beam.all_tokens).reshape(n, MAX_LEN),
                                hf_tokens(hf.sequences))
  np.testing.assert_allclose(np.asarray(beam.all_scores).reshape(n),
                             hf.sequences_scores.numpy(), rtol=1e-4, atol=1e-5)


BEAM = dict(beam_size=3, alpha=1.0, early_stopping=True,
            length_penalty=decoding.power_length_penalty)  # shares the compile of the HF case


def test_batch_invariance_with_mixed_prompt_lengths(t5, greedy_result):
  """A row's output depends on neither the other rows, nor its position, nor its padding."""
  step, cache = t5.decoder_state(pad(PROMPTS))
  beams = decode(decoding.beam_search, step, cache, batch_size=len(PROMPTS),
                 max_decode_len=MAX_LEN, **BEAM)
  # Same shapes, other companions: reversed order, then prompt 1 among unrelated prompts.
  others = [[4, 4, 4, 4, 4, 4, 4, 4], [63], [2, 9]]
  for batch, rows in [(PROMPTS[::-1], [3, 2, 1, 0]), ([PROMPTS[1]] + others, [1])]:
    step, cache = t5.decoder_state(pad(batch, length=len(PROMPTS[0])))
    greedy = decode(decoding.greedy, step, cache, batch_size=4, max_decode_len=MAX_LEN)
    beam = decode(decoding.beam_search, step, cache, batch_size=4, max_decode_len=MAX_LEN, **BEAM)
    for position, row in enumerate(rows):
      np.testing.assert_array_equal(greedy.tokens[position], greedy_result.tokens[row])
      np.testing.assert_array_equal(beam.all_tokens[position], beams.all_tokens[row])
  # Alone in a batch of one and without its padding (3 tokens instead of 8).
  step, cache = t5.decoder_state(pad([PROMPTS[1]]))
  alone = decode(decoding.greedy, step, cache, batch_size=1, max_decode_len=MAX_LEN)
  np.testing.assert_array_equal(alone.tokens[0], greedy_result.tokens[1])
  np.testing.assert_allclose(alone.logprobs[0], greedy_result.logprobs[1], rtol=1e-4, atol=1e-5)


def test_stream_greedy_t5(t5, greedy_result):
  step, cache = t5.decoder_state(pad(PROMPTS))
  stream = list(decoding.stream_greedy(step, cache, batch_size=len(PROMPTS),
                                       max_decode_len=MAX_LEN))
  np.testing.assert_array_equal(np.stack(stream, axis=1), greedy_result.tokens[:, :len(stream)])


@pytest.mark.slow
def test_temperature_sample_logprobs_are_model_logprobs(t5):
  """Sampled tokens' logprobs are the unmodified model's, whatever the temperature."""
  enc = pad(PROMPTS)
  step, cache = t5.decoder_state(enc)
  out = decode(decoding.temperature_sample, step, cache, batch_size=len(PROMPTS),
               max_decode_len=MAX_LEN, rng=jax.random.PRNGKey(0), temperature=1.7, top_k=20,
               top_p=0.95)
  inputs = np.concatenate([np.zeros((len(PROMPTS), 1), np.int32),
                           np.asarray(out.tokens)[:, :-1]], axis=1)
  logits = t5.module.apply({"params": t5.params}, t5.encode(enc), enc > 0, jnp.asarray(inputs),
                           method=T5EncoderDecoder.decode)
  logp = jax.nn.log_softmax(logits)
  expected = np.take_along_axis(np.asarray(logp), np.asarray(out.tokens)[..., None], -1)[..., 0]
  mask = np.arange(MAX_LEN)[None] < np.asarray(out.lengths)[:, None]
  np.testing.assert_allclose(np.where(mask, expected, 0), out.logprobs, rtol=1e-4, atol=1e-5)
