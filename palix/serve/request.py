"""A completion request: the JSON body, validated against the :class:`~palix.serve.limits.Limits`.

::

  {"images": ["data:image/png;base64,..."],          # query image(s), base64 or data URLs
   "prompt": "detect cat ; dog",
   "examples": [{"image": "...", "prompt": "...", "answer": "..."}],   # optional, few-shot
   "max_new_tokens": 16, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": null}

Unknown fields are errors (a misspelt option must not be silently ignored). Every error is a
:class:`RequestError` whose message names the field and, for a bound, the limit.
"""

import dataclasses
import json
import math
from typing import Any, Hashable, Optional, Tuple

import numpy as np

from palix.serve import images as images_lib
from palix.serve.limits import Limits
from palix.serve.request_error import RequestError

_FIELDS = ("images", "prompt", "examples", "max_new_tokens", "temperature", "top_k", "top_p",
           "seed")
_EXAMPLE_FIELDS = ("image", "prompt", "answer")
MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
  """How to decode one answer. ``temperature == 0`` is greedy (``top_k``/``top_p`` unused)."""
  max_new_tokens: int
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: Optional[int] = None

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  def batch_key(self) -> Hashable:
    """Requests with equal keys can share one decode.

    Rows of a batch never interact except through the sampling key, so greedy requests always
    batch; sampled ones batch when they share ``top_k`` and ``top_p`` (temperature is per row).
    A seeded request is decoded alone: its seed then fixes its answer whatever else is queued.
    """
    if self.greedy:
      return ("greedy",)
    if self.seed is not None:
      return ("seeded", id(self))
    return ("sample", self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class Example:
  image: np.ndarray
  prompt: str
  answer: str


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
  images: Tuple[np.ndarray, ...]
  prompt: str
  examples: Tuple[Example, ...]
  options: DecodingOptions


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _text(value: Any, where: str, limits: Limits) -> str:
  if not isinstance(value, str):
    raise RequestError(400, f"{where} must be a string; got {type(value).__name__}")
  if not value.strip():
    raise RequestError(400, f"{where} is empty")
  if len(value) > limits.max_prompt_chars:
    raise RequestError(400, f"{where} is {len(value)} characters; the limit is "
                            f"max_prompt_chars={limits.max_prompt_chars}")
  return value


def _image(value: Any, where: str, limits: Limits) -> np.ndarray:
  if not isinstance(value, str):
    raise RequestError(400, f"{where} must be a base64 string or a data: URL; got "
                            f"{type(value).__name__}")
  return images_lib.decode_image(value, limits, where)


def _unknown_fields(record: dict, allowed: Tuple[str, ...], where: str):
  unknown = sorted(set(record) - set(allowed))
  if unknown:
    raise RequestError(400, f"unknown field{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(repr(u) for u in unknown)} in {where}; the fields are "
                            f"{', '.join(allowed)}")


def _decoding_options(body: dict, limits: Limits) -> DecodingOptions:
  max_new_tokens = body.get("max_new_tokens", limits.max_new_tokens)
  if not _is_int(max_new_tokens) or not 1 <= max_new_tokens <= limits.max_new_tokens:
    raise RequestError(400, f"max_new_tokens must be an integer from 1 to "
                            f"{limits.max_new_tokens} (limit max_new_tokens="
                            f"{limits.max_new_tokens}); got {max_new_tokens!r}")
  temperature = body.get("temperature", 0.0)
  if not _is_number(temperature) or not 0 <= temperature <= limits.max_temperature:
    raise RequestError(400, f"temperature must be a number from 0 (greedy) to "
                            f"{limits.max_temperature} (limit max_temperature="
                            f"{limits.max_temperature}); got {temperature!r}")
  top_k = body.get("top_k", 0)
  if not _is_int(top_k) or not 0 <= top_k <= limits.max_top_k:
    raise RequestError(400, f"top_k must be an integer from 0 (all tokens) to "
                            f"{limits.max_top_k} (limit max_top_k={limits.max_top_k}); got "
                            f"{top_k!r}")
  top_p = body.get("top_p", 1.0)
  if not _is_number(top_p) or not 0 < top_p <= 1:
    raise RequestError(400, f"top_p must be a number in (0, 1]; got {top_p!r}")
  seed = body.get("seed")
  if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
    raise RequestError(400, f"seed must be null or an integer from 0 to {MAX_SEED}; got "
                            f"{seed!r}")
  return DecodingOptions(max_new_tokens, float(temperature), top_k, float(top_p), seed)


def parse_request(body: bytes, limits: Limits) -> CompletionRequest:
  """Validates a JSON body (bytes) and decodes its images; raises :class:`RequestError`."""
  try:
    record = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RequestError(400, f"the request body is not JSON ({e}); send a JSON object such as "
                            '{"images": ["<base64>"], "prompt": "caption en"}') from e
  if not isinstance(record, dict):
    raise RequestError(400, f"the request body must be a JSON object; got "
                            f"{type(record).__name__}")
  _unknown_fields(record, _FIELDS, "the request")
  missing = [k for k in ("images", "prompt") if k not in record]
  if missing:
    raise RequestError(400, f"missing field{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)}")
  query = record["images"]
  if not isinstance(query, list) or not query:
    raise RequestError(400, "images must be a non-empty list of base64 images")
  examples = record.get("examples", [])
  if not isinstance(examples, list):
    raise RequestError(400, f"examples must be a list; got {type(examples).__name__}")
  count = len(examples) + len(query)
  if count > limits.max_images:
    raise RequestError(400, f"{len(examples)} examples + {len(query)} query images = {count} "
                            f"images; the limit is max_images={limits.max_images}")
  options = _decoding_options(record, limits)  # cheap checks before decoding images
  prompt = _text(record["prompt"], "prompt", limits)
  parsed_examples = []
  for i, example in enumerate(examples):
    where = f"examples[{i}]"
    if not isinstance(example, dict):
      raise RequestError(400, f"{where} must be an object with image, prompt and answer")
    _unknown_fields(example, _EXAMPLE_FIELDS, where)
    missing = [k for k in _EXAMPLE_FIELDS if k not in example]
    if missing:
      raise RequestError(400, f"{where} is missing {', '.join(missing)}")
    parsed_examples.append(Example(_image(example["image"], f"{where}.image", limits),
                                   _text(example["prompt"], f"{where}.prompt", limits),
                                   _text(example["answer"], f"{where}.answer", limits)))
  pixels = tuple(_image(image, f"images[{i}]", limits) for i, image in enumerate(query))
  return CompletionRequest(pixels, prompt, tuple(parsed_examples), options)
