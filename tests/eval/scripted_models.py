"""Models with known outputs for evaluator tests (the ``palix.models.base`` contract, in numpy).

* :class:`OracleModel` answers every example with its own target tokens, each token with
  log-probability ``-STEP * (position + 1)``, and scores a text 0 if it is the target it answered
  for that image and prompt, -1 otherwise. Every metric must then be perfect.
* :class:`MuteModel` emits EOS at once and scores every text the same, so every generative metric
  is 0 and zero-shot classification picks the first class.
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

STEP = 0.01


def _key(images, prompt) -> str:
  digest = hashlib.sha1(np.ascontiguousarray(images).tobytes())
  digest.update(np.ascontiguousarray(prompt).tobytes())
  return digest.hexdigest()


class OracleModel:
  """See the module docstring. ``answered`` maps (image, prompt) digests to target tokens."""

  def __init__(self):
    self.answered = {}

  def predict_batch_with_aux(self, params, batch, rng=None, *, max_decode_len=None, **kwargs):
    del params, rng, kwargs
    targets = np.asarray(batch["decoder_target_tokens"])
    images, prompts = np.asarray(batch["images"]), np.asarray(batch["encoder_input_tokens"])
    length = max_decode_len or targets.shape[1]
    tokens = np.zeros((len(targets), length), np.int32)
    tokens[:, :min(length, targets.shape[1])] = targets[:, :length]
    emitted = (tokens != 0).sum(axis=1)
    positions = np.arange(length)[None, :]
    logprobs = np.where(positions < emitted[:, None], -STEP * (positions + 1), 0.0)
    for row in range(len(targets)):
      self.answered[_key(images[row], prompts[row])] = targets[row]
    return tokens, {"logprobs": logprobs.astype(np.float32), "lengths": emitted}

  def _score(self, images, prompts, targets):
    out = np.empty((len(targets),), np.float32)
    for row in range(len(targets)):
      known = self.answered.get(_key(images[row], prompts[row]))
      same = known is not None and np.array_equal(known[:targets.shape[1]], targets[row])
      out[row] = 0.0 if same else -1.0
    return out

  def score_batch(self, params, batch):
    del params
    return jax.pure_callback(
        self._score, jax.ShapeDtypeStruct((batch["decoder_target_tokens"].shape[0],), jnp.float32),
        batch["images"], batch["encoder_input_tokens"], batch["decoder_target_tokens"])


class MuteModel:
  """See the module docstring."""

  def predict_batch_with_aux(self, params, batch, rng=None, *, max_decode_len=None, **kwargs):
    del params, rng, kwargs
    rows = np.asarray(batch["encoder_input_tokens"]).shape[0]
    tokens = np.zeros((rows, max_decode_len), np.int32)
    tokens[:, 0] = 1
    logprobs = np.zeros((rows, max_decode_len), np.float32)
    logprobs[:, 0] = -0.5
    return tokens, {"logprobs": logprobs, "lengths": np.ones((rows,), np.int32)}

  def score_batch(self, params, batch):
    del params
    return jnp.zeros((batch["decoder_target_tokens"].shape[0],), jnp.float32)
