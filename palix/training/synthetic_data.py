"""A deterministic in-memory task (pure numpy) with the same signature as
``palix.tasks.dataset.get_batches``: for tests and for running the trainer without TensorFlow.

The task ("synthetic_brightness") is learnable from images *and* text: every image of an example is
a flat grey level ``c`` in ``{0..3}`` plus noise, the prompt is one token ``p`` in ``{0..3}``, and
the target is the token for ``(c + p) mod 4``. Token ids follow the T5 layout (0 pad, 1 EOS, 2 UNK);
prompts use ids 3..6 and answers 7..10, so a vocabulary of 11 suffices.

Example ``j`` of a split is a pure function of ``(split, j)``; ``shuffle`` permutes the order per
epoch with ``seed``. Batch ``k`` covers global positions ``k*B .. (k+1)*B-1`` (``B`` = per-shard
batch size times ``num_shards``), and shard ``i`` takes its contiguous slice, so ``start_step=k``
resumes exactly and the global batch does not depend on how many shards read it.
"""

import functools
import time
import zlib
from typing import Dict, Iterator, Mapping, Optional

import gin
import numpy as np

TASK_NAME = "synthetic_brightness"
NUM_LEVELS = 4
NUM_PROMPTS = 4
FIRST_PROMPT_ID = 3
FIRST_ANSWER_ID = FIRST_PROMPT_ID + NUM_PROMPTS
VOCAB_SIZE = FIRST_ANSWER_ID + NUM_LEVELS
_DEFAULT_SIZES = {"train": 4096}
_DEFAULT_EVAL_SIZE = 64


def answer_token(level: int, prompt: int) -> int:
  return FIRST_ANSWER_ID + (level + prompt) % NUM_LEVELS


def make_example(split: str, index: int, *, num_images: int, image_size: int,
                 input_length: int, target_length: int) -> Dict[str, np.ndarray]:
  """Example ``index`` of ``split`` in model-feature form (unbatched)."""
  rng = np.random.default_rng([zlib.crc32(split.encode()), index])
  level, prompt = int(rng.integers(NUM_LEVELS)), int(rng.integers(NUM_PROMPTS))
  noise = rng.normal(0.0, 0.1, (num_images, image_size, image_size, 3))
  images = np.clip(-0.75 + 0.5 * level + noise, -1.0, 1.0).astype(np.float32)
  inputs = np.zeros(input_length, np.int32)
  inputs[:2] = [FIRST_PROMPT_ID + prompt, 1][:input_length]
  targets = np.zeros(target_length, np.int32)
  targets[:2] = [answer_token(level, prompt), 1][:target_length]
  return {
      "images": images,
      "image_mask": np.ones(num_images, np.int32),
      "encoder_input_tokens": inputs,
      "decoder_input_tokens": np.concatenate([[0], targets[:-1]]).astype(np.int32),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


@gin.configurable
def synthetic_batches(mixture_or_task_name: str = TASK_NAME, *, split: str, batch_size: int,
                      feature_lengths: Mapping[str, int], num_images: int = 1,
                      image_size: int = 16, seed: int = 0, shuffle: bool = True,
                      repeat: bool = True, start_step: int = 0, shard_index: int = 0,
                      num_shards: int = 1, num_examples: Optional[int] = None,
                      seconds_per_batch: float = 0.0) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of ``batch_size`` rows (this shard's) of the synthetic task.

  ``num_examples`` sets the split size (default 4096 for train, 64 otherwise). Without ``repeat``
  the iterator ends after one pass; as in ``palix.tasks.dataset``, the last batch is filled with
  all-zero rows (``image_mask`` 0, loss weights 0), so every shard yields as many full batches.
  ``seconds_per_batch`` slows the source down (to test preemption).
  """
  if mixture_or_task_name != TASK_NAME:
    raise ValueError(f"synthetic_batches only provides {TASK_NAME!r}, not "
                     f"{mixture_or_task_name!r}")
  missing = {"inputs", "targets"} - set(feature_lengths)
  if missing:
    raise ValueError(f"feature_lengths {dict(feature_lengths)} lacks {sorted(missing)}")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards})")
  size = num_examples or _DEFAULT_SIZES.get(split, _DEFAULT_EVAL_SIZE)
  geometry = dict(num_images=num_images, image_size=image_size,
                  input_length=feature_lengths["inputs"], target_length=feature_lengths["targets"])
  global_batch = batch_size * num_shards
  padding = {k: np.zeros_like(v) for k, v in make_example(split, 0, **geometry).items()}
  step = start_step
  while repeat or step * global_batch < size:
    first = step * global_batch + shard_index * batch_size
    rows = [make_example(split, _example_index(p, size, seed, shuffle), **geometry)
            if repeat or p < size else padding for p in range(first, first + batch_size)]
    if seconds_per_batch:
      time.sleep(seconds_per_batch)
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    step += 1


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(size)


def _example_index(position: int, size: int, seed: int, shuffle: bool) -> int:
  epoch, offset = divmod(position, size)
  return int(_permutation(seed, epoch, size)[offset]) if shuffle else offset
