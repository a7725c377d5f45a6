"""``palix serve``'s JSON and streaming API on a loopback port, against the Generator decoding each
request alone."""

import base64
import concurrent.futures
import json
import threading

import numpy as np
import pytest

from palix.serve import client as client_lib

from serving_testing import MAX_TARGET, random_images

def _request(images, prompt, examples=(), **options):
  return dict(images=[client_lib.image_data_url(i) for i in images], prompt=prompt,
              examples=[{"image": client_lib.image_data_url(img), "prompt": p, "answer": a}
                        for img, p, a in examples], **options)


def _alone(generator, images, prompt, examples=(), max_new_tokens=MAX_TARGET):
  return generator.complete(list(images), prompt, list(examples), max_decode_len=max_new_tokens)


def test_info_reports_the_model_and_limits(server):
  info = server.info()
  assert info["model"]["num_images"] == 3 and info["model"]["max_target_len"] == MAX_TARGET
  assert info["limits"]["max_new_tokens"] == MAX_TARGET and info["limits"]["max_images"] == 3
  assert info["limits"]["max_image_side"] == 128 and info["batching"]["batch_sizes"] == [1, 4]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, generator):
  """Eight requests at once, half streamed: every answer equals its request decoded alone by the
  Generator, several decodes hold more than one request, and the answers differ (so a mix-up
  would show)."""
  images = random_images(8, seed=1)
  prompts = ["caption en", "what is this", "shape en", "colour", "count", "detect cat",
             "name en", "describe"]
  shot = random_images(1, seed=9)[0]
  cases = []
  for i, (image, prompt) in enumerate(zip(images, prompts)):
    examples = [(shot, "name en", "red")] if i % 3 == 0 else []
    cases.append(((image,), prompt, examples, 8 if i % 4 == 1 else MAX_TARGET))
  barrier = threading.Barrier(len(cases))

  def send(i):
    query, prompt, examples, length = cases[i]
    request = _request(query, prompt, examples, max_new_tokens=length)
    barrier.wait()
    if i % 2:
      return server.complete(request)
    events = list(server.stream(request))
    assert [e for e, _ in events[:-1]] == ["token"] * (len(events) - 1)
    assert events[-1][0] == "done"
    return events[-1][1]

  with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
    answers = list(pool.map(send, range(len(cases))))
  for (query, prompt, examples, length), answer in zip(cases, answers):
    expected = _alone(generator, query, prompt, examples, length)
    assert answer["tokens"] == list(expected.tokens), (prompt, answer)
    assert answer["text"] == expected.text
    assert answer["truncated"] == (len(expected.tokens) == length)
  assert max(a["batch_size"] for a in answers) > 1
  assert len({a["text"] for a in answers}) >= 4


def test_stream_sends_each_token_as_decoded(server, generator):
  image = random_images(1, seed=3)[0]
  events = list(server.stream(_request([image], "caption en", max_new_tokens=MAX_TARGET)))
  tokens = [data for event, data in events if event == "token"]
  done = events[-1][1]
  assert [t["token"] for t in tokens] == done["tokens"]
  text = ""
  for token in tokens:  # each event carries the new text and the whole text so far
    text += token["delta"]
    assert token["text"] == text
  assert text == done["text"] == _alone(generator, [image], "caption en").text
  assert done["truncated"] == (len(done["tokens"]) == MAX_TARGET)


def test_truncation_is_flagged(server, generator):
  image = random_images(1, seed=4)[0]
  full = _alone(generator, [image], "shape en")
  assert len(full.tokens) >= 2  # the random model writes at least two tokens here
  answer = server.complete(_request([image], "shape en", max_new_tokens=1))
  assert answer["tokens"] == list(full.tokens[:1]) and answer["truncated"]


def _png_bytes(side):
  data_url = client_lib.image_data_url(np.zeros((side, side, 3), np.uint8))
  return data_url.split(",", 1)[1]


LONG_PROMPT = "a b c d e f g h i j k l m n o p q r s t u v w x y z"  # 51 chars, 34 tokens
GOOD_IMAGE = client_lib.image_data_url(random_images(1)[0])
NOISE_PNG = client_lib.image_data_url(
    np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)).split(",", 1)[1]


@pytest.mark.parametrize("body,status,words", [
    (b"caption this", 400, ["not JSON"]),
    (b"[1, 2]", 400, ["JSON object"]),
    (json.dumps({"images": [GOOD_IMAGE]}).encode(), 400, ["missing field prompt"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": "x", "max_tokens": 3}).encode(), 400,
     ["unknown field 'max_tokens'", "max_new_tokens"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": "x", "examples": [
        {"image": GOOD_IMAGE, "prompt": "a", "answer": "b", "score": 1}]}).encode(), 400,
     ["unknown field 'score' in examples[0]"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": "x", "max_new_tokens": -3}).encode(), 400,
     ["max_new_tokens must be an integer from 1 to 16", "limit max_new_tokens=16", "-3"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": "x", "temperature": 9}).encode(), 400,
     ["temperature", "max_temperature=2.0"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": "x", "top_p": 0}).encode(), 400, ["top_p"]),
    (json.dumps({"images": [base64.b64encode(b"hello, not a picture").decode()],
                 "prompt": "x"}).encode(), 415, ["images[0]", "not an image"]),
    (json.dumps({"images": ["data:text/plain;base64," + base64.b64encode(b"hi").decode()],
                 "prompt": "x"}).encode(), 415, ["images[0]", "'text/plain'"]),
    (json.dumps({"images": ["%%%"], "prompt": "x"}).encode(), 400, ["images[0]", "base64"]),
    (json.dumps({"images": [_png_bytes(129)], "prompt": "x"}).encode(), 413,
     ["images[0] is 129x129 pixels", "max_image_side=128"]),
    (json.dumps({"images": [NOISE_PNG], "prompt": "x"}).encode(), 413,
     ["images[0] is", "max_image_bytes=20000"]),
    (json.dumps({"images": [GOOD_IMAGE] * 2, "prompt": "x", "examples": [
        {"image": GOOD_IMAGE, "prompt": "a", "answer": "b"}] * 2}).encode(), 400,
     ["4 images", "max_images=3"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": "y" * 61}).encode(), 400,
     ["prompt is 61 characters", "max_prompt_chars=60"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": LONG_PROMPT}).encode(), 400,
     ["max_input_len=24"]),
    (json.dumps({"images": [GOOD_IMAGE], "prompt": "x <sep> y"}).encode(), 400, ["<sep>"]),
    (b"{" + b" " * 200_001 + b"}", 413, ["max_request_bytes=200000"]),
])
def test_bad_requests_get_a_4xx_that_says_what_and_which_limit(server, body, status, words):
  for path in ("/api/complete", "/api/stream"):
    got, answer = server.post(path, body)
    assert got == status, answer
    for word in words:
      assert word in answer["error"], answer["error"]


def test_the_server_keeps_serving_after_bad_requests(server, generator):
  image = random_images(1, seed=5)[0]
  for body in (b"nope", json.dumps({"images": ["%"], "prompt": "x"}).encode()):
    assert server.post("/api/complete", body)[0] == 400
  answer = server.complete(_request([image], "caption en"))
  assert answer["text"] == _alone(generator, [image], "caption en").text


def test_unknown_routes_and_methods_answer_json(server):
  assert server.post("/api/nothing", b"{}")[0] == 404
  status, body = server.post("/api/info", b"{}")
  assert status == 405 and "/api/info" in body["error"]
