"""The parity task: binary sequences of mixed lengths, labelled with the parity of their ones.

A TF-free numpy batch source with the signature of ``palix.tasks.dataset.get_batches`` (see
``palix.training.data``), not a SeqIO task: the examples are bits and a class, with nothing to
tokenize, decode or convert, and generating them in numpy keeps the experiment's input pipeline
out of its CPU budget. Batches::

  inputs  int32 [B, L]  0 = padding, 1 = a zero bit, 2 = a one bit (L = feature_lengths['inputs'])
  labels  int32 [B]     number of one bits mod 2

Lengths are drawn per example from ``lengths`` with relative ``weights`` (both gin-bound). Example
``p`` of a stream is a pure function of ``(split, seed, p)`` (the training stream is an endless
sequence of fresh examples; other splits ignore ``seed``, so every run evaluates on the same
examples), and batch ``k`` covers stream positions ``k*B .. (k+1)*B - 1`` with shard ``i`` taking
its contiguous slice: ``start_step`` resumes exactly.
"""

import zlib
from typing import Dict, Iterator, Mapping, Optional, Sequence

import gin
import numpy as np

TASK_NAME = "parity"
PAD, ZERO, ONE = 0, 1, 2
VOCAB_SIZE = 3


def make_example(split: str, seed: int, position: int, *, lengths: Sequence[int],
                 weights: Sequence[float], padded_length: int) -> Dict[str, np.ndarray]:
  """Example ``position`` of ``split``'s stream (``seed`` only matters for ``train``)."""
  stream_seed = seed if split == "train" else 0
  rng = np.random.default_rng([zlib.crc32(split.encode()), stream_seed, position])
  length = int(rng.choice(lengths, p=weights))
  bits = rng.integers(0, 2, length)
  inputs = np.zeros(padded_length, np.int32)
  inputs[:length] = bits + ZERO
  return {"inputs": inputs, "labels": np.int32(bits.sum() % 2)}


def _check(lengths, weights, padded_length):
  if not lengths or any(int(n) != n or n < 1 for n in lengths):
    raise ValueError(f"parity_batches.lengths = {tuple(lengths)}: need positive integers")
  if len(weights) != len(lengths) or any(w < 0 for w in weights) or not sum(weights) > 0:
    raise ValueError(f"parity_batches.weights = {tuple(weights)}: need one non-negative weight "
                     f"per length {tuple(lengths)}, not all zero")
  if max(lengths) > padded_length:
    raise ValueError(f"parity_batches.lengths has {max(lengths)} but feature_lengths['inputs'] "
                     f"(TASK_FEATURE_LENGTHS) is {padded_length}: sequences would be cut")


@gin.configurable
def parity_batches(mixture_or_task_name: str = TASK_NAME, *, split: str, batch_size: int,
                   feature_lengths: Mapping[str, int], seed: int = 0, shuffle: bool = True,
                   repeat: bool = True, start_step: int = 0, shard_index: int = 0,
                   num_shards: int = 1, lengths: Sequence[int] = (8,),
                   weights: Optional[Sequence[float]] = None,
                   num_examples: int = 1024) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of ``batch_size`` rows (this shard's) of parity examples.

  ``lengths``/``weights``: the sequence lengths and their mix (default: equal weights).
  Without ``repeat`` the stream has ``num_examples`` examples (a multiple of the global batch,
  so that no example is dropped or padded) and ends.
  ``shuffle`` is accepted for the signature; every position is already a fresh random example.
  """
  del shuffle
  if mixture_or_task_name != TASK_NAME:
    raise ValueError(f"parity_batches only provides {TASK_NAME!r}, not {mixture_or_task_name!r}")
  if "inputs" not in feature_lengths:
    raise ValueError(f"feature_lengths {dict(feature_lengths)} lacks 'inputs' (the padded "
                     "sequence length; TASK_FEATURE_LENGTHS = {'inputs': N})")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards})")
  lengths = tuple(lengths)
  weights = tuple(weights) if weights is not None else (1.0,) * len(lengths)
  padded_length = feature_lengths["inputs"]
  _check(lengths, weights, padded_length)
  probabilities = np.asarray(weights, np.float64) / sum(weights)
  global_batch = batch_size * num_shards
  if not repeat and num_examples % global_batch:
    raise ValueError(f"parity_batches.num_examples = {num_examples} is not a multiple of the "
                     f"global batch size {global_batch}: the last batch would be partial")
  step = start_step
  while repeat or step * global_batch < num_examples:
    first = step * global_batch + shard_index * batch_size
    rows = [make_example(split, seed, p, lengths=lengths, weights=probabilities,
                         padded_length=padded_length) for p in range(first, first + batch_size)]
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    step += 1
