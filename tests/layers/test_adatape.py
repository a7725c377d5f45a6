"""The Adaptive Tape Reader and tape banks: a numpy re-derivation of the loop, exact halting,
no bank entry read twice, hand-computed ponder costs, the banks against numpy, bad configs."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.layers import adatape
from palix.layers.adatape import (AdaTape, AdaTapeConfig, InputTapeBank, LearnedTapeBank,
                                  entropy_ponder_cost, max_ponder_cost, read_tape)
from palix.layers.patch import patchify


# One compiled reader per config (eager scan/cond dispatch is several times slower).
read_tape = jax.jit(read_tape, static_argnames="config")


def resolved(entries=64, depth=2, width=8, num_heads=2, **kw):
  return AdaTapeConfig(**kw).resolved(depth=depth, width=width, num_heads=num_heads,
                                      num_bank_inputs=entries, class_token=False, owner="test")


def np_read_tape(query, entries, c):
  """The reader, one example at a time, in float64 with Python control flow."""
  b, n, d = entries.shape
  k = query.shape[-1]
  tokens = np.zeros((b, c.max_tape_tokens, d))
  indices = -np.ones((b, c.max_tape_tokens, c.top_k), int)
  count, ponder, halting = np.zeros(b, int), np.zeros(b), np.zeros(b)
  for i in range(b):
    q, used = query[i].astype(np.float64), np.zeros(n, bool)
    for t in range(c.max_tape_tokens):
      if halting[i] >= c.threshold:
        break
      scores = entries[i, :, :k] @ q
      order = [j for j in np.argsort(-scores, kind="stable") if not used[j]][:c.top_k]
      z = scores[order] / math.sqrt(k)
      w = np.exp(z - z.max())
      w /= w.sum()
      tokens[i, t] = w @ entries[i, order]
      indices[i, t] = order
      used[order] = True
      ponder[i] += 1 - (w ** 2).sum() if c.ponder_cost is entropy_ponder_cost else 1 - w.max()
      halting[i] += w[0]
      count[i] += 1
      key = tokens[i, t, :k]
      q = (q + key) / 2 if c.average_query_update else key
  return tokens, count, ponder, halting, indices


@pytest.mark.parametrize("cost,average", [(entropy_ponder_cost, True), (max_ponder_cost, False)])
def test_reader_matches_numpy_loop(cost, average):
  c = resolved(entries=24, max_tape_tokens=5, top_k=3, threshold=1.6, ponder_cost=cost,
               average_query_update=average, key_features=4)
  rng = np.random.RandomState(0)
  query = rng.standard_normal((6, 4)).astype(np.float32)
  entries = (2 * rng.standard_normal((6, 24, 8))).astype(np.float32)
  got = read_tape(query, entries, c)
  tokens, count, ponder, halting, indices = np_read_tape(query, entries, c)
  assert len(set(count)) > 1  # the examples halt at different steps
  np.testing.assert_array_equal(got.num_tokens, count)
  np.testing.assert_array_equal(got.indices, indices)
  np.testing.assert_allclose(got.tokens, tokens, atol=1e-5)
  np.testing.assert_allclose(got.ponder, ponder, atol=1e-5)
  np.testing.assert_allclose(got.halting, halting, atol=1e-5)


_TIES = resolved(entries=12, max_tape_tokens=6, top_k=2, key_features=1)


@jax.jit
def _read_ties(threshold):
  """The reader over identical entries (every score ties, so each step's weights are exactly
  1/top_k), with the threshold traced: one compilation for every threshold below."""
  query, entries = np.ones((1, 1), np.float32), np.ones((1, 12, 4), np.float32)
  return read_tape.__wrapped__(query, entries, dataclasses.replace(_TIES, threshold=threshold))


@pytest.mark.parametrize("threshold,steps", [(0.5, 1), (0.9999, 2), (1.0, 2), (1.0001, 3),
                                             (2.5, 5), (2.5001, 6), (9.0, 6)])
def test_halting_exactly_when_accumulated_probability_crosses(threshold, steps):
  """top_k = 2 over ties: each step adds exactly 0.5, so the reader stops at the first step
  whose sum reaches the threshold (equality counts), or runs all 6 steps."""
  read = _read_ties(threshold)
  assert int(read.num_tokens[0]) == steps
  assert float(read.halting[0]) == pytest.approx(0.5 * steps)
  assert (np.asarray(read.indices[0, steps:]) == -1).all()
  assert (np.asarray(read.tokens[0, steps:]) == 0).all()
  assert (np.asarray(read.indices[0, :steps]) >= 0).all()


def test_halting_per_example_in_one_batch():
  """Examples with different halting increments stop at their own step; finished examples keep
  their state while the others run on."""
  c = resolved(entries=16, max_tape_tokens=8, top_k=2, threshold=1.4, key_features=1)
  # Example 0: scores tie (0.5 per step -> 3 steps). Example 1: two equal entries far above the
  # rest give 0.5 at step 1; the query moves to them (15.5), and entry 2 then dominates a zero
  # entry (scores 155 vs 0): weight 1, total 1.5 -> 2 steps.
  entries = np.ones((2, 16, 1), np.float32)
  entries[1, :, 0] = 0.0
  entries[1, :2, 0] = 30.0
  entries[1, 2, 0] = 10.0
  query = np.ones((2, 1), np.float32)
  read = read_tape(query, entries, c)
  np.testing.assert_array_equal(read.num_tokens, [3, 2])


def test_used_entries_never_read_twice():
  """Bank size = steps * top_k and no halting: every entry is read exactly once, even though
  the query (not updated here) keeps pointing at the same entries."""
  c = resolved(entries=20, max_tape_tokens=5, top_k=4, threshold=100.0, key_features=3,
               average_query_update=False)
  rng = np.random.RandomState(1)
  entries = rng.standard_normal((4, 20, 6)).astype(np.float32)
  entries[:, :4, :3] = 5.0  # the same four entries win every fresh query
  read = read_tape(rng.standard_normal((4, 3)).astype(np.float32), entries, c)
  for row in np.asarray(read.indices):
    assert sorted(row.ravel()) == list(range(20))


def test_ponder_cost_hand_computed():
  """One key feature; query 1. Step 1 reads scores (ln 3, 0): w = (3/4, 1/4), entropy cost
  1 - (9/16 + 1/16) = 3/8, max cost 1/4, halting 3/4. Step 2 reads two tied entries: w = (1/2,
  1/2), both costs 1/2, halting 5/4 >= 1 -> stop."""
  entries = np.array([[[math.log(3)], [0.0], [-5.0], [-5.0], [-9.0], [-9.0]]], np.float32)
  query = np.ones((1, 1), np.float32)
  for cost, want in ((entropy_ponder_cost, 3 / 8 + 1 / 2), (max_ponder_cost, 1 / 4 + 1 / 2)):
    c = resolved(entries=6, max_tape_tokens=3, top_k=2, threshold=1.0, ponder_cost=cost,
                 key_features=1)
    read = read_tape(query, entries, c)
    assert int(read.num_tokens[0]) == 2
    assert float(read.ponder[0]) == pytest.approx(want, abs=1e-6)
    assert float(read.halting[0]) == pytest.approx(1.25, abs=1e-6)
    # tape token 1 = 3/4 ln 3 + 1/4 * 0; token 2 = the mean of the two -5 entries.
    np.testing.assert_allclose(read.tokens[0, :2, 0], [0.75 * math.log(3), -5.0], atol=1e-6)
  # The loss term: weight x mean over the batch; the logged tokens per example.
  c = resolved(entries=6, max_tape_tokens=3, top_k=2, ponder_loss_weight=0.01)
  loss, metrics = adatape.ponder_loss_and_metrics(
      {"ponder_cost": jnp.array([0.375, 0.875]), "tape_tokens_used": jnp.array([1, 2])}, c)
  assert float(loss) == pytest.approx(0.01 * 0.625)
  assert {k: float(v) for k, v in metrics.items()} == pytest.approx(
      {"ponder_cost": 0.625, "tape_tokens_mean": 1.5, "tape_tokens_min": 1.0,
       "tape_tokens_max": 2.0})
  # A padding row (weight 0) counts nowhere.
  loss, metrics = adatape.ponder_loss_and_metrics(
      {"ponder_cost": jnp.array([0.375, 0.875, 9.0]), "tape_tokens_used": jnp.array([1, 2, 7])},
      c, weights=jnp.array([1, 1, 0]))
  assert float(loss) == pytest.approx(0.01 * 0.625)
  assert float(metrics["tape_tokens_max"]) == 2.0 and float(metrics["tape_tokens_mean"]) == 1.5


# ---- banks and the module ------------------------------------------------------------------


def test_input_bank_is_a_second_patch_embedding(random_params):
  c = resolved(entries=16, bank_patch_size=4, max_tape_tokens=2, top_k=2, width=8)
  bank = InputTapeBank(c, width=8)
  images = np.random.RandomState(3).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  p = random_params(bank, images)
  got = bank.apply({"params": p}, images)
  patches = np.asarray(patchify(images, 4)[0])  # [2, 16, 48]
  x = patches @ p["embedding"]["kernel"] + p["embedding"]["bias"] + p["pos_embedding"]
  want = x @ p["pre_bank"]["kernel"] + p["pre_bank"]["bias"]
  assert got.shape == (2, 16, 8)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_module_appends_tape_read_from_normed_query_and_bank(random_params):
  """The module = LayerNorm'd GAP query and bank (one shared LayerNorm) + read_tape; the tape
  slots an example does not use get segment id 0."""
  c = resolved(bank=LearnedTapeBank, bank_size=30, max_tape_tokens=4, top_k=3, threshold=1.3,
               key_features=4)
  module = AdaTape(c, width=8)
  rng = np.random.RandomState(4)
  tokens = rng.standard_normal((3, 5, 8)).astype(np.float32)
  segment_ids = np.array([[1] * 5, [1] * 3 + [0] * 2, [2] * 4 + [0]], np.int32)
  p = random_params(module, tokens, segment_ids, None)
  x, ids, read = jax.jit(module.apply)({"params": p}, tokens, segment_ids, None)

  def ln(v):
    v = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)
    return v * p["bank_norm"]["scale"] + p["bank_norm"]["bias"]

  valid = (segment_ids > 0)[..., None]
  query = ln((tokens * valid).sum(1) / valid.sum(1))[:, :4]
  entries = np.broadcast_to(ln(np.asarray(p["bank"]["entries"])), (3, 30, 8))
  want, count, *_ = np_read_tape(query, entries, c)
  np.testing.assert_array_equal(read.num_tokens, count)
  np.testing.assert_allclose(x[:, 5:], want, atol=1e-4)
  np.testing.assert_array_equal(x[:, :5], tokens)
  visible = np.arange(4)[None] < count[:, None]
  np.testing.assert_array_equal(ids[:, 5:], np.where(visible, [[1], [1], [2]], 0))


# ---- bad configs ---------------------------------------------------------------------------


def test_bad_config_errors_name_the_binding():
  with pytest.raises(ValueError, match=r"AdaTapeConfig.threshold = 0.0 \(bound as test\).*> 0"):
    resolved(threshold=0.0)
  with pytest.raises(ValueError, match=r"AdaTapeConfig.threshold = -1"):
    resolved(threshold=-1)
  with pytest.raises(ValueError, match=r"max_tape_tokens \* AdaTapeConfig.top_k = 10 x 5 .* "
                                       r"may need 50 distinct bank entries but the bank has 49"):
    resolved(entries=49, max_tape_tokens=10, top_k=5)
  with pytest.raises(ValueError, match=r"may need 6 distinct .* has 5 \(AdaTapeConfig.bank_size\)"):
    resolved(bank=LearnedTapeBank, bank_size=5, max_tape_tokens=3, top_k=2)
  with pytest.raises(ValueError, match=r"AdaTapeConfig.tape_layer = 2 .* outside the depth: "
                                       r".*blocks 0..1 \(depth 2\)"):
    resolved(tape_layer=2)
  with pytest.raises(ValueError, match=r"AdaTapeConfig.tape_layer = -1"):
    resolved(tape_layer=-1)
  with pytest.raises(ValueError, match=r"AdaTapeConfig.top_k = 2.5 .* positive integer"):
    resolved(top_k=2.5)
  with pytest.raises(ValueError, match=r"ClassTokenQuery .*ViTConfig.class_token = True"):
    resolved(query=adatape.ClassTokenQuery)
