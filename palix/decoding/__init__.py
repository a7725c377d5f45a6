"""Decoding over a ``tokens_to_logits(cache, tokens, step)`` model step (no TF); pure functions
that the caller jits (t5x's shape), except the streaming iterator's own jitted step.

* :func:`greedy`, :func:`temperature_sample` (temperature, top-k then top-p)
  -> :class:`DecodeResult`
* :func:`beam_search` (GNMT or power length penalty) -> :class:`BeamSearchResult`
* :func:`stream_greedy`, :func:`stream_sample`: iterators over tokens, step by step

See docs/decoding.md.
"""

from palix.decoding.beam_search import BeamSearchResult, beam_search
from palix.decoding.length_penalty import gnmt_length_penalty, power_length_penalty
from palix.decoding.sampling import DecodeResult, decode_length, greedy, temperature_sample
from palix.decoding.streaming import stream_greedy, stream_sample

__all__ = [
    "BeamSearchResult", "DecodeResult", "beam_search", "decode_length",
    "gnmt_length_penalty", "greedy", "power_length_penalty", "stream_greedy", "stream_sample",
    "temperature_sample",
]
