"""A tiny non-Markov toy language model with a two-leaf cache, plus its numpy reference.

Next-token logits depend on the whole prefix through both cache leaves:

* ``state [B, D]``: ``state <- tanh(state @ W + E[token])``, read out by ``U``;
* ``history [B, L]``: the fed tokens; each previous occurrence of a token lowers its logit
  (a repetition penalty), so wrong cache gathering in beam search changes the scores.

``reference_logprobs(example, prefix)`` recomputes the next-token log-probabilities from scratch in
numpy, independently of the cache, for brute-force enumeration and reference beam search.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

BOS, EOS = 0, 1


@dataclasses.dataclass
class ToyModel:
  vocab: int
  max_len: int
  init_state: np.ndarray   # [num_examples, D]
  w: np.ndarray            # [D, D]
  embed: np.ndarray        # [V, D]
  readout: np.ndarray      # [D, V]
  bigram: np.ndarray       # [V, V]
  repeat_penalty: float

  @property
  def params(self):
    return {"w": jnp.asarray(self.w), "embed": jnp.asarray(self.embed),
            "readout": jnp.asarray(self.readout), "bigram": jnp.asarray(self.bigram)}

  def cache(self, examples):
    """The step-0 cache for the given example ids (rows)."""
    examples = np.asarray(examples)
    return {"state": jnp.asarray(self.init_state[examples]),
            "history": jnp.full((len(examples), self.max_len), -1, jnp.int32)}

  def tokens_to_logits(self):
    """The step over the parameters, a ``jax.tree_util.Partial`` (a pytree: jit traces them)."""
    return jax.tree_util.Partial(toy_step, self.params, self.repeat_penalty)

  def reference_logprobs(self, example, prefix):
    """numpy log p(next | BOS + prefix) for one example, recomputed from scratch."""
    state = self.init_state[example].astype(np.float64)
    fed = [BOS] + list(prefix)
    for tok in fed:
      state = np.tanh(state @ self.w + self.embed[tok])
    counts = np.bincount(fed, minlength=self.vocab)
    logits = state @ self.readout + self.bigram[fed[-1]] - self.repeat_penalty * counts
    logits = logits - logits.max()
    return logits - np.log(np.exp(logits).sum())

  def sequence_logprob(self, example, tokens):
    return sum(self.reference_logprobs(example, tokens[:i])[tok] for i, tok in enumerate(tokens))


def toy_step(params, repeat_penalty, cache, tokens, step):
  token = tokens[:, 0]
  history = jax.lax.dynamic_update_slice(cache["history"], tokens, (0, step))
  state = jnp.tanh(cache["state"] @ params["w"] + params["embed"][token])
  counts = jax.nn.one_hot(history, params["bigram"].shape[0]).sum(axis=1)  # -1 -> zeros
  logits = state @ params["readout"] + params["bigram"][token] - repeat_penalty * counts
  return logits, {"state": state, "history": history}


def make_toy(seed=0, vocab=5, max_len=4, dim=4, num_examples=4, eos_bias=0.0, scale=1.5):
  rs = np.random.RandomState(seed)
  bigram = rs.normal(0, scale, (vocab, vocab))
  bigram[:, EOS] += eos_bias
  return ToyModel(
      vocab=vocab, max_len=max_len,
      init_state=rs.normal(0, 1, (num_examples, dim)).astype(np.float32),
      w=rs.normal(0, 0.7, (dim, dim)).astype(np.float32),
      embed=rs.normal(0, 1, (vocab, dim)).astype(np.float32),
      readout=rs.normal(0, scale, (dim, vocab)).astype(np.float32),
      bigram=bigram.astype(np.float32), repeat_penalty=0.8)
