"""Beam search on the toy model: brute force, an independent list-based reference, greedy."""

import itertools

import numpy as np
import pytest

from palix import decoding
from jitted import decode
from palix.decoding import gnmt_length_penalty, power_length_penalty
from decoding_toy_lm import EOS, make_toy


def all_sequences(vocab, max_len, eos=EOS):
  """Every hypothesis beam search can return: ends in EOS at length <= L, or is cut at L."""
  others = [v for v in range(vocab) if v != eos]
  for n in range(max_len):
    for prefix in itertools.product(others, repeat=n):
      yield prefix + (eos,)
  yield from itertools.product(others, repeat=max_len)


def reference_beam_search(toy, example, beam_size, max_len, alpha, penalty, early_stopping,
                          min_new_tokens=0):
  """The documented procedure (palix/decoding/beam_search.py), one example, Python lists."""
  k = beam_size
  alive = [((), 0.0)]
  finished = []  # (score, tokens)
  for t in range(max_len):
    candidates = []
    for tokens, total in alive:
      logp = toy.reference_logprobs(example, list(tokens))
      candidates += [(total + logp[v], tokens + (v,)) for v in range(toy.vocab)
                     if v != EOS or t >= min_new_tokens]
    candidates = sorted(candidates, key=lambda c: -c[0])[:2 * k]
    alive = []
    for rank, (total, tokens) in enumerate(candidates):
      if tokens[-1] == EOS or t == max_len - 1:
        if rank < k:
          finished.append((total / penalty(t + 1, alpha), tokens))
      elif len(alive) < k:
        alive.append((tokens, total))
    finished = sorted(finished, key=lambda f: -f[0])[:k]
    if len(finished) == k:
      best_reachable = max(penalty(t + 2, alpha), penalty(max_len, alpha))
      if early_stopping or not alive or alive[0][1] / best_reachable <= finished[-1][0]:
        break
    if not alive:
      break
  return finished


def run_beam(toy, examples, max_len, **kwargs):
  return decode(decoding.beam_search, toy.tokens_to_logits(), toy.cache(examples),
                batch_size=len(examples), max_decode_len=max_len, **kwargs)


def as_rows(result, b):
  """[(score, tokens tuple)] of example b's non-empty slots."""
  rows = []
  for k in range(result.all_scores.shape[1]):
    n = int(result.all_lengths[b, k])
    if n:
      rows.append((float(result.all_scores[b, k]), tuple(int(x) for x in
                                                           result.all_tokens[b, k, :n])))
  return rows


@pytest.mark.parametrize("alpha,penalty", [
    (0.6, gnmt_length_penalty), (2.0, gnmt_length_penalty),
    pytest.param(1.0, power_length_penalty, marks=pytest.mark.slow)])  # one more compile
def test_covering_beam_finds_brute_force_ranking(alpha, penalty):
  """With beam_size >= V^L nothing is pruned: the finished list is the brute-force ranking."""
  toy = make_toy(seed=3, vocab=4, max_len=4)
  beam = toy.vocab ** toy.max_len
  result = run_beam(toy, [0, 1], 4, beam_size=beam, alpha=alpha, length_penalty=penalty)
  for b, example in enumerate([0, 1]):
    brute = sorted(((toy.sequence_logprob(example, seq) / penalty(len(seq), alpha), seq)
                    for seq in all_sequences(toy.vocab, toy.max_len)), key=lambda s: -s[0])
    got = as_rows(result, b)
    assert [seq for _, seq in got] == [seq for _, seq in brute]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in brute], rtol=1e-5)
    assert tuple(np.asarray(result.tokens[b, :result.lengths[b]])) == brute[0][1]
    assert np.all(np.isneginf(np.asarray(result.all_scores[b, len(brute):])))


CASES = [  # beam_size, alpha, penalty, early_stopping
    (3, 0.6, gnmt_length_penalty, True),
    (3, 0.6, gnmt_length_penalty, False),
    (2, 1.0, power_length_penalty, True),
    (2, 1.0, power_length_penalty, False),
]


@pytest.fixture(scope="module")
def pruning_toy():
  return make_toy(seed=13, vocab=7, max_len=6, num_examples=4, eos_bias=-0.5)


@pytest.mark.parametrize("beam_size,alpha,penalty,early_stopping", CASES)
def test_matches_reference_beam_search(pruning_toy, beam_size, alpha, penalty, early_stopping):
  toy, examples = pruning_toy, [0, 1, 2, 3]
  result = run_beam(toy, examples, 6, beam_size=beam_size, alpha=alpha, length_penalty=penalty,
                    early_stopping=early_stopping)
  for b, example in enumerate(examples):
    expected = reference_beam_search(toy, example, beam_size, 6, alpha, penalty, early_stopping)
    got = as_rows(result, b)
    assert [seq for _, seq in got] == [seq for _, seq in expected], (b, got, expected)
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-5)
    # Per-token logprobs are the raw model's, and the score is their penalised sum.
    for k, (_, seq) in enumerate(expected):
      lps = np.asarray(result.all_logprobs[b, k])
      ref = [toy.reference_logprobs(example, list(seq[:i]))[tok] for i, tok in enumerate(seq)]
      np.testing.assert_allclose(lps[:len(seq)], ref, rtol=1e-5, atol=1e-5)
      assert np.all(lps[len(seq):] == 0) and np.all(result.all_tokens[b, k, len(seq):] == 0)


def test_min_new_tokens_matches_reference_beam_search(pruning_toy):
  examples, minimum = [0, 1, 2, 3], 4
  result = run_beam(pruning_toy, examples, 6, beam_size=3, alpha=0.6,
                    length_penalty=gnmt_length_penalty, early_stopping=True,
                    min_new_tokens=minimum)
  changed = False
  for b, example in enumerate(examples):
    expected = reference_beam_search(pruning_toy, example, 3, 6, 0.6, gnmt_length_penalty, True,
                                     min_new_tokens=minimum)
    got = as_rows(result, b)
    assert [seq for _, seq in got] == [seq for _, seq in expected], (b, got, expected)
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-5)
    assert all(len(seq) >= minimum for _, seq in got)
    unconstrained = reference_beam_search(pruning_toy, example, 3, 6, 0.6, gnmt_length_penalty,
                                          True)
    changed |= [seq for _, seq in unconstrained] != [seq for _, seq in expected]
  assert changed  # the constraint matters on this toy


def test_reference_cases_are_discriminating(pruning_toy):
  """The stopping rule and beam width change the answer on this toy, so the cases test them."""
  def beams(k, alpha, penalty, early):
    return [reference_beam_search(pruning_toy, ex, k, 6, alpha, penalty, early)
            for ex in range(4)]
  for k, alpha, penalty, _ in CASES[::2]:
    assert beams(k, alpha, penalty, True) != beams(k, alpha, penalty, False)
  best = lambda k: [r[0] for r in beams(k, 0.6, gnmt_length_penalty, False)]
  assert best(1) != best(3)


@pytest.mark.parametrize("alpha,early_stopping", [(0.6, True), (3.0, True), (0.0, False)])
def test_beam_size_one_is_greedy(pruning_toy, alpha, early_stopping):
  examples = [0, 1, 2, 3]
  beam = run_beam(pruning_toy, examples, 6, beam_size=1, alpha=alpha,
                  early_stopping=early_stopping)
  greedy = decode(decoding.greedy, pruning_toy.tokens_to_logits(), pruning_toy.cache(examples),
                  batch_size=4, max_decode_len=6)
  np.testing.assert_array_equal(beam.tokens, greedy.tokens)
  np.testing.assert_allclose(beam.logprobs, greedy.logprobs, rtol=1e-6)
  np.testing.assert_array_equal(beam.lengths, greedy.lengths)


def test_beam_batch_invariance(pruning_toy):
  options = dict(beam_size=2, alpha=1.0, length_penalty=power_length_penalty)  # as CASES[2]
  batched = run_beam(pruning_toy, [0, 1, 2, 3], 6, **options)
  for b in range(4):
    alone = run_beam(pruning_toy, [b], 6, **options)
    np.testing.assert_array_equal(alone.all_tokens[0], batched.all_tokens[b])
    np.testing.assert_allclose(alone.all_scores[0], batched.all_scores[b], rtol=1e-6)


def test_beam_sorted_best_first(pruning_toy):
  result = run_beam(pruning_toy, [0, 1, 2, 3], 6, beam_size=3)
  scores = np.asarray(result.all_scores)
  assert np.all(np.diff(scores, axis=1) <= 0)
  np.testing.assert_array_equal(result.scores, scores[:, 0])


def test_beam_bad_arguments(toy):
  with pytest.raises(ValueError, match="beam_size"):
    run_beam(toy, [0], 3, beam_size=0)
  with pytest.raises(ValueError, match="alpha"):
    run_beam(toy, [0], 3, beam_size=2, alpha=float("nan"))
