"""Request validation and image uploads (no model): each refusal names the field and the limit."""

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from palix.serve import images
from palix.serve.limits import Limits
from palix.serve.request import DecodingOptions, parse_request
from palix.serve.request_error import RequestError

LIMITS = Limits(max_images=3, max_new_tokens=8, max_image_side=32, max_image_bytes=2500,
                max_prompt_chars=20)


def _encoded(pixels, image_format="PNG"):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=image_format)
  return base64.b64encode(buffer.getvalue()).decode()


PIXELS = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)


def _body(**fields):
  return json.dumps({"images": [_encoded(PIXELS)], "prompt": "caption en", **fields}).encode()


def _refused(body, limits=LIMITS):
  with pytest.raises(RequestError) as info:
    parse_request(body, limits)
  return info.value.status, info.value.message


def test_a_full_request_round_trips_its_pixels_and_options():
  shot = PIXELS[::-1].copy()
  request = parse_request(_body(
      images=[f"data:image/png;base64,{_encoded(PIXELS)}", _encoded(PIXELS, "BMP")],
      examples=[{"image": _encoded(shot), "prompt": "name en", "answer": "red"}],
      max_new_tokens=5, temperature=0.7, top_k=3, top_p=0.9, seed=11), LIMITS)
  assert len(request.images) == 2
  for pixels in request.images:  # lossless formats decode to the same RGB values
    np.testing.assert_array_equal(pixels, PIXELS)
  np.testing.assert_array_equal(request.examples[0].image, shot)
  assert (request.examples[0].prompt, request.examples[0].answer) == ("name en", "red")
  assert request.options == DecodingOptions(5, 0.7, 3, 0.9, 11)


def test_defaults_are_greedy_up_to_the_limit():
  options = parse_request(_body(), LIMITS).options
  assert options == DecodingOptions(max_new_tokens=8) and options.greedy


def test_grayscale_and_alpha_images_become_rgb():
  gray = _encoded(PIXELS[..., 0])
  rgba = _encoded(np.concatenate([PIXELS, np.full((12, 10, 1), 7, np.uint8)], -1))
  for data in (gray, rgba):
    assert images.decode_image(data, LIMITS, "images[0]").shape == (12, 10, 3)


@pytest.mark.parametrize("fields,status,words", [
    ({"max_new_tokens": -1}, 400, ["max_new_tokens", "1 to 8", "limit max_new_tokens=8", "-1"]),
    ({"max_new_tokens": 9}, 400, ["limit max_new_tokens=8", "9"]),
    ({"max_new_tokens": 2.5}, 400, ["max_new_tokens must be an integer"]),
    ({"max_new_tokens": True}, 400, ["max_new_tokens must be an integer"]),
    ({"temperature": -0.1}, 400, ["temperature", "max_temperature=2.0"]),
    ({"top_k": 1001}, 400, ["top_k", "max_top_k=1000"]),
    ({"top_p": 1.5}, 400, ["top_p must be a number in (0, 1]"]),
    ({"seed": -4}, 400, ["seed must be null or an integer"]),
    ({"prompt": 7}, 400, ["prompt must be a string"]),
    ({"prompt": "   "}, 400, ["prompt is empty"]),
    ({"prompt": "p" * 21}, 400, ["prompt is 21 characters", "max_prompt_chars=20"]),
    ({"images": []}, 400, ["images must be a non-empty list"]),
    ({"images": [3]}, 400, ["images[0] must be a base64 string"]),
    ({"examples": {"image": "x"}}, 400, ["examples must be a list"]),
    ({"examples": ["x"]}, 400, ["examples[0] must be an object"]),
    ({"examples": [{"image": "x", "prompt": "p"}]}, 400, ["examples[0] is missing answer"]),
    ({"examples": [{"image": _encoded(PIXELS), "prompt": "p", "answer": "a" * 21}]}, 400,
     ["examples[0].answer is 21 characters", "max_prompt_chars=20"]),
    ({"examples": [{"image": "x", "prompt": "p", "answer": "a"}] * 3}, 400,
     ["3 examples + 1 query images = 4 images", "max_images=3"]),
    ({"stream": True, "beams": 2}, 400, ["unknown fields 'beams', 'stream' in the request"]),
])
def test_bad_fields_are_refused_by_name(fields, status, words):
  got, message = _refused(_body(**fields))
  assert got == status
  for word in words:
    assert word in message, message


@pytest.mark.parametrize("body,words", [
    (b"", ["not JSON"]), (b"\xff\xfe", ["not JSON"]), (b'"a string"', ["must be a JSON object"]),
    (b'{"prompt": "x"}', ["missing field images"]), (b"{}", ["missing fields images, prompt"]),
])
def test_bodies_that_are_not_a_request_object(body, words):
  status, message = _refused(body)
  assert status == 400 and all(w in message for w in words), message


@pytest.mark.parametrize("data,status,words", [
    (base64.b64encode(b"GIF89a but not really").decode(), 415, ["images[0]: not an image file"]),
    ("data:application/pdf;base64,JVBERi0=", 415, ["'application/pdf' upload is not an image"]),
    ("data:image/png," + _encoded(PIXELS), 400, ["must be base64-encoded"]),
    ("not base64!", 400, ["not valid base64"]),
    (_encoded(np.zeros((8, 33, 3), np.uint8)), 413, ["33x8 pixels", "max_image_side=32"]),
    (_encoded(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)), 413,
     ["max_image_bytes=2500"]),
    (_encoded(PIXELS)[:len(_encoded(PIXELS)) // 2 // 4 * 4], 415, ["damaged"]),
])
def test_uploads_that_are_not_acceptable_images(data, status, words):
  got, message = _refused(json.dumps({"images": [data], "prompt": "x"}).encode())
  assert got == status, message
  for word in words:
    assert word in message, message


def _png_header(width, height):
  """A PNG that declares ``width x height`` pixels and holds none (a few dozen bytes)."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
  return base64.b64encode(png).decode()


@pytest.mark.parametrize("side", [5000, 100_000])
def test_a_huge_declared_image_is_refused_before_its_pixels_are_decoded(side):
  with pytest.raises(RequestError) as info:
    images.decode_image(_png_header(side, side), Limits(max_image_side=4096), "images[0]")
  assert info.value.status == 413 and "max_image_side=4096" in info.value.message
  assert f"{side}x{side}" in info.value.message or "pixels" in info.value.message


def test_batch_keys_say_which_requests_can_share_a_decode():
  greedy = [DecodingOptions(8), DecodingOptions(3, temperature=0.0, top_k=5)]
  sampled = [DecodingOptions(8, 0.5, 3, 0.9), DecodingOptions(2, 1.5, 3, 0.9)]
  assert len({o.batch_key() for o in greedy}) == 1  # greedy ignores top_k/top_p/length
  assert len({o.batch_key() for o in sampled}) == 1  # temperature is per row
  assert DecodingOptions(8, 0.5, 4, 0.9).batch_key() != sampled[0].batch_key()
  seeded = [DecodingOptions(8, 0.5, 3, 0.9, seed=1), DecodingOptions(8, 0.5, 3, 0.9, seed=1)]
  assert len({o.batch_key() for o in seeded} | {sampled[0].batch_key()}) == 3  # each alone


def test_limits_are_checked_against_the_model():
  class Model:
    num_images, max_target_len = 4, 32
  assert Limits().for_model(Model()) == Limits(max_images=4, max_new_tokens=32)
  with pytest.raises(ValueError, match="Limits.max_images=5 but the model has num_images=4"):
    Limits(max_images=5).for_model(Model())
