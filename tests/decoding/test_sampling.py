"""Greedy decoding and temperature sampling on the toy model (see conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix import decoding
from jitted import decode
from decoding_toy_lm import EOS, make_toy

EXAMPLES = [0, 1, 2, 3]


def reference_greedy(toy, example, max_len, eos=EOS, min_new_tokens=0):
  tokens = []
  for step in range(max_len):
    logprobs = toy.reference_logprobs(example, tokens)
    if step < min_new_tokens:
      logprobs[eos] = -np.inf
    tokens.append(int(np.argmax(logprobs)))
    if tokens[-1] == eos:
      break
  return tokens


def padded(rows, length):
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def run(toy, examples=EXAMPLES, **kwargs):
  kwargs.setdefault("max_decode_len", toy.max_len)
  return decode(decoding.temperature_sample, toy.tokens_to_logits(), toy.cache(examples),
                batch_size=len(examples), **kwargs)


def check_eos_layout(result, max_len, eos=EOS):
  """After EOS only zeros (tokens and logprobs); lengths = EOS position + 1, else max_len."""
  tokens, logprobs, lengths = map(np.asarray, result)
  for row, lps, length in zip(tokens, logprobs, lengths):
    eos_at = np.flatnonzero(row == eos)
    expected = eos_at[0] + 1 if eos_at.size else max_len
    assert length == expected
    assert np.all(row[expected:] == 0) and np.all(lps[expected:] == 0)


def check_logprobs(toy, examples, result):
  """logprobs[i] == log_softmax(raw logits)[token i], recomputed from scratch in numpy."""
  tokens, logprobs, lengths = map(np.asarray, result)
  for ex, row, lps, n in zip(examples, tokens, logprobs, lengths):
    expected = [toy.reference_logprobs(ex, list(row[:i]))[row[i]] for i in range(n)]
    np.testing.assert_allclose(lps[:n], expected, rtol=1e-5, atol=1e-5)


def test_greedy_equals_stepwise_argmax():
  toy = make_toy(seed=1, vocab=7, max_len=6)
  result = decode(decoding.greedy, toy.tokens_to_logits(), toy.cache(EXAMPLES), batch_size=4,
                  max_decode_len=6)
  expected = padded([reference_greedy(toy, ex, 6) for ex in EXAMPLES], 6)
  np.testing.assert_array_equal(result.tokens, expected)
  check_eos_layout(result, 6)
  check_logprobs(toy, EXAMPLES, result)


def test_min_new_tokens_forbids_eos_before_it(toy):
  """Hugging Face's ``min_new_tokens``: EOS cannot be chosen earlier; logprobs stay the raw
  model's. ``max_new_tokens`` is ``max_decode_len``'s alias."""
  plain = run(toy, greedy=True)
  first_eos = int(np.min(plain.lengths))
  assert first_eos < toy.max_len  # a row ends early without the constraint
  for minimum in (first_eos + 1, toy.max_len):
    result = decode(decoding.greedy, toy.tokens_to_logits(), toy.cache(EXAMPLES), batch_size=4,
                    max_new_tokens=toy.max_len, min_new_tokens=minimum)
    expected = [reference_greedy(toy, ex, toy.max_len, min_new_tokens=minimum) for ex in EXAMPLES]
    np.testing.assert_array_equal(result.tokens, padded(expected, toy.max_len))
    assert int(np.min(result.lengths)) >= minimum
    check_eos_layout(result, toy.max_len)
    check_logprobs(toy, EXAMPLES, result)
  with pytest.raises(ValueError, match="same setting"):
    decoding.greedy(toy.tokens_to_logits(), toy.cache(EXAMPLES), batch_size=4, max_decode_len=3,
                    max_new_tokens=4)
  with pytest.raises(ValueError, match="min_new_tokens"):
    decoding.greedy(toy.tokens_to_logits(), toy.cache(EXAMPLES), batch_size=4, max_decode_len=3,
                    min_new_tokens=-1)


def test_greedy_without_eos_runs_full_length(toy):
  result = run(toy, greedy=True, eos_id=-1)
  np.testing.assert_array_equal(result.lengths, [toy.max_len] * 4)
  expected = padded([reference_greedy(toy, ex, toy.max_len, eos=-1) for ex in EXAMPLES],
                    toy.max_len)
  np.testing.assert_array_equal(result.tokens, expected)


@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(top_k=1),
                                     dict(top_p=1e-6), dict(temperature=jnp.zeros(4))])
def test_degenerate_sampling_is_greedy(toy, options):
  greedy = run(toy, greedy=True)
  sampled = run(toy, rng=jax.random.PRNGKey(3), **options)
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
  np.testing.assert_allclose(sampled.logprobs, greedy.logprobs)


def test_per_row_temperature_zero_rows_are_greedy(toy):
  greedy = run(toy, greedy=True)
  sampled = run(toy, rng=jax.random.PRNGKey(0), temperature=jnp.array([0.0, 5.0, 0.0, 5.0]))
  np.testing.assert_array_equal(sampled.tokens[0::2], greedy.tokens[0::2])


def test_sampling_reproducible_and_consistent():
  toy = make_toy(seed=2, vocab=6, max_len=6, eos_bias=1.0)
  examples = [0, 1, 2, 3] * 8
  kwargs = dict(examples=examples, max_decode_len=6, temperature=1.3, top_k=4, top_p=0.9)
  a = run(toy, rng=jax.random.PRNGKey(7), **kwargs)
  b = run(toy, rng=jax.random.PRNGKey(7), **kwargs)
  c = run(toy, rng=jax.random.PRNGKey(8), **kwargs)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.tokens, c.tokens)
  check_eos_layout(a, 6)
  check_logprobs(toy, examples, a)
  lengths = np.asarray(a.lengths)
  assert lengths.min() < 6 and lengths.max() == 6  # both early EOS and truncation exercised


def first_token_probs(toy, example, temperature, top_k, top_p):
  """The documented target distribution: temperature, then top-k, then top-p, renormalised."""
  logits = toy.reference_logprobs(example, []) / temperature
  order = np.argsort(-logits, kind="stable")
  keep = order[:top_k or len(order)]
  probs = np.exp(logits[keep] - logits[keep].max())
  probs /= probs.sum()
  mass_before = np.cumsum(probs) - probs
  keep, probs = keep[mass_before < top_p], probs[mass_before < top_p]
  out = np.zeros(len(logits))
  out[keep] = probs / probs.sum()
  return out


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.6, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.7), (2.0, 4, 0.8)])
def test_first_token_distribution(temperature, top_k, top_p):
  toy = make_toy(seed=6, vocab=6, max_len=1, scale=0.5)
  n = 20000
  result = run(toy, examples=[0] * n, max_decode_len=1, rng=jax.random.PRNGKey(11),
               temperature=temperature, top_k=top_k, top_p=top_p)
  counts = np.bincount(np.asarray(result.tokens[:, 0]), minlength=toy.vocab)
  probs = first_token_probs(toy, 0, temperature, top_k, top_p)
  assert np.count_nonzero(probs) >= 2  # a real distribution, not a point mass
  assert np.all(counts[probs == 0] == 0), (counts, probs)
  support = probs > 0
  chi2 = np.sum((counts[support] - n * probs[support]) ** 2 / (n * probs[support]))
  assert chi2 < 25.0, (chi2, counts / n, probs)  # df <= 5, p ~ 1e-4


def test_batch_invariance_greedy_and_rows_independent(toy):
  batched = run(toy, greedy=True)
  for i, ex in enumerate(EXAMPLES):
    alone = run(toy, examples=[ex], greedy=True)
    np.testing.assert_array_equal(alone.tokens[0], batched.tokens[i])
    np.testing.assert_allclose(alone.logprobs[0], batched.logprobs[i], rtol=1e-6)


def test_works_under_an_outer_jit_with_a_closure(toy):
  @jax.jit
  def decode_inside(params, cache):
    fn = lambda c, t, s: toy.tokens_to_logits().func(params, toy.repeat_penalty, c, t, s)
    return decoding.greedy(fn, cache, batch_size=4, max_decode_len=toy.max_len)

  inside = decode_inside(toy.params, toy.cache(EXAMPLES))
  np.testing.assert_array_equal(inside.tokens, run(toy, greedy=True).tokens)


def test_bad_arguments_are_named(toy):
  fn, cache = toy.tokens_to_logits(), toy.cache(EXAMPLES)
  with pytest.raises(ValueError, match=r"\['history'\].*batch \(3\)"):
    decoding.greedy(fn, cache, batch_size=3, max_decode_len=2)
  with pytest.raises(ValueError, match="needs an rng"):
    decoding.temperature_sample(fn, cache, batch_size=4, max_decode_len=2)
  with pytest.raises(ValueError, match="top_p"):
    decoding.temperature_sample(fn, cache, batch_size=4, max_decode_len=2,
                                rng=jax.random.PRNGKey(0), top_p=0.0)
  with pytest.raises(ValueError, match="top_k"):
    decoding.temperature_sample(fn, cache, batch_size=4, max_decode_len=2,
                                rng=jax.random.PRNGKey(0), top_k=-1)
  bad_step = lambda c, t, s: (jnp.zeros((4, 5)), {**c, "state": c["state"][:, :2]})
  with pytest.raises(ValueError, match=r"\['state'\]"):
    decoding.greedy(bad_step, cache, batch_size=4, max_decode_len=2)
