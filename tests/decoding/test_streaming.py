"""The streaming iterator yields exactly what the batch decoders return."""

import jax
import numpy as np
import pytest

from palix import decoding
from jitted import decode
from decoding_toy_lm import make_toy


@pytest.fixture(scope="module")
def toy():
  return make_toy(seed=2, vocab=6, max_len=6, eos_bias=0.5)


def stacked(stream, batch_size, max_len):
  steps = [np.atleast_1d(np.asarray(s)) for s in stream]
  out = np.zeros((batch_size, max_len), np.int32)
  if steps:
    out[:, :len(steps)] = np.stack(steps, axis=1)
  return out, len(steps)


def test_stream_greedy_equals_greedy(toy):
  examples = [0, 1, 2, 3]
  kwargs = dict(batch_size=4, max_decode_len=6)
  greedy = decode(decoding.greedy, toy.tokens_to_logits(), toy.cache(examples), **kwargs)
  stream = decoding.stream_greedy(toy.tokens_to_logits(), toy.cache(examples), **kwargs)
  tokens, steps = stacked(stream, 4, 6)
  np.testing.assert_array_equal(tokens, greedy.tokens)
  assert steps == int(np.max(greedy.lengths))  # stops once every row has emitted EOS


def test_stream_single_example_yields_ints(toy):
  stream = list(decoding.stream_greedy(toy.tokens_to_logits(), toy.cache([1]), batch_size=1,
                                       max_decode_len=6))
  assert all(type(t) is int for t in stream)
  greedy = decode(decoding.greedy, toy.tokens_to_logits(), toy.cache([1]), batch_size=1,
                  max_decode_len=6)
  np.testing.assert_array_equal(stream, greedy.tokens[0, :len(stream)])
  assert len(stream) == int(greedy.lengths[0])


def test_stream_sample_equals_temperature_sample(toy):
  examples = [0, 1, 2, 3] * 8  # the shapes of test_sampling's sampling test: one compile
  kwargs = dict(batch_size=32, max_decode_len=6, rng=jax.random.PRNGKey(4), temperature=1.5,
                top_k=4, top_p=0.9)
  sampled = decode(decoding.temperature_sample, toy.tokens_to_logits(), toy.cache(examples),
                   **kwargs)
  stream = decoding.stream_sample(toy.tokens_to_logits(), toy.cache(examples), **kwargs)
  np.testing.assert_array_equal(stacked(stream, 32, 6)[0], sampled.tokens)


def test_stream_min_new_tokens_and_traced_parameters(toy):
  """``min_new_tokens`` as in ``greedy`` (the step is a ``jax.tree_util.Partial``: traced)."""
  examples = [0, 1, 2, 3]
  greedy = decode(decoding.greedy, toy.tokens_to_logits(), toy.cache(examples), batch_size=4,
                  max_decode_len=6, min_new_tokens=3)
  stream = decoding.stream_greedy(toy.tokens_to_logits(), toy.cache(examples), batch_size=4,
                                  max_new_tokens=6, min_new_tokens=3)
  np.testing.assert_array_equal(stacked(stream, 4, 6)[0], greedy.tokens)


def test_stream_checks_arguments_eagerly(toy):
  with pytest.raises(ValueError, match="batch"):
    decoding.stream_greedy(toy.tokens_to_logits(), toy.cache([0, 1]), batch_size=3,
                           max_decode_len=4)
