"""The queue and the decode thread, with a scripted engine (no model): which requests share a
decode, per-row ends, a full queue (503), timeouts (504), cancelled rows and failed decodes, over
HTTP where the status matters."""

import json
import threading
import time
import types

import numpy as np
import pytest

from palix.serve import client as client_lib
from palix.serve.app import create_app
from palix.serve.limits import Limits
from palix.serve.request import DecodingOptions
from palix.serve.scheduler import Batching, Done, Failed, QueueFull, Scheduler, Token
from palix.serve.server import ServerThread

EOS = 1


class ScriptedEngine:
  """Answers the prompt ``"a b c"`` with the tokens of ``SCRIPT["a b c"]``, padded with 0 after
  EOS, one step at a time; each decode waits until ``gate`` is set, and records its prompts and
  how many steps were taken from it."""

  SCRIPT = {"one": [11, 12, EOS], "two": [21, 22, 23, 24, 25, EOS], "long": list(range(30, 38)),
            "boom": [], "breaks": list(range(40, 48))}
  max_batch_size = 4
  batch_sizes = (4,)
  model = types.SimpleNamespace(eos_id=EOS, num_images=1, image_size=8, max_input_len=8,
                                max_target_len=8,
                                config=types.SimpleNamespace(segment_separator_id=None))
  generator = types.SimpleNamespace(detokenize=lambda ids: " ".join(f"t{i}" for i in ids))

  def __init__(self):
    self.gate = threading.Event()
    self.gate.set()
    self.decodes = []  # [prompts of the decode, steps taken]

  def encode(self, request):
    return {"prompt": request.prompt}

  def stream(self, inputs, options, rng):
    del options, rng
    prompts = [i["prompt"] for i in inputs]
    record = [prompts, 0]
    self.decodes.append(record)
    self.gate.wait(10)
    if "boom" in prompts:
      raise RuntimeError("the accelerator caught fire")
    scripts = [self.SCRIPT[p] + [0] * 8 for p in prompts]
    for step in range(8):
      if step == 4 and "breaks" in prompts:
        raise RuntimeError("lost the device")
      record[1] += 1
      yield np.array([s[step] for s in scripts])
      if all(EOS in s[:step + 1] for s in scripts):
        return


class Collector:
  def __init__(self):
    self.events = []
    self.finished = threading.Event()

  def emit(self, event):
    self.events.append(event)
    if isinstance(event, (Done, Failed)):
      self.finished.set()


@pytest.fixture
def engine():
  return ScriptedEngine()


def _scheduler(engine, **batching):
  scheduler = Scheduler(engine, Batching(**{"batch_wait_s": 0.0, **batching}))
  scheduler.start()
  return scheduler


def _submit(scheduler, prompt, **options):
  collector = Collector()
  job = scheduler.new_job({"prompt": prompt},
                          DecodingOptions(**{"max_new_tokens": 8, **options}), collector.emit)
  scheduler.submit(job)
  return job, collector


def test_compatible_requests_share_a_decode_and_finish_on_their_own(engine):
  engine.gate.clear()
  scheduler = _scheduler(engine)
  try:
    first = _submit(scheduler, "long")  # the decode thread takes it and waits at the gate
    while not engine.decodes:
      time.sleep(0.001)
    one = _submit(scheduler, "one")
    sampled = _submit(scheduler, "two", temperature=0.5)
    two = _submit(scheduler, "two", max_new_tokens=3)
    seeded = [_submit(scheduler, "one", temperature=0.5, seed=3) for _ in range(2)]
    engine.gate.set()
    for _, collector in (first, one, sampled, two, *seeded):
      assert collector.finished.wait(10)
  finally:
    scheduler.stop()
  # FIFO: the oldest request picks its batch; greedy requests together, sampled alone (it is
  # the only unseeded sampled one), then each seeded request alone.
  assert [d[0] for d in engine.decodes] == [["long"], ["one", "two"], ["two"], ["one"], ["one"]]
  assert engine.decodes[1][1] == 3  # "two" stopped at its max_new_tokens=3, "one" at EOS
  done = one[1].events[-1]
  assert isinstance(done, Done) and done.result["tokens"] == [11, 12]
  assert not done.result["truncated"] and done.result["batch_size"] == 2
  assert [e.token for e in one[1].events if isinstance(e, Token)] == [11, 12]
  assert two[1].events[-1].result["tokens"] == [21, 22, 23]
  assert two[1].events[-1].result["truncated"]
  assert first[1].events[-1].result["text"] == " ".join(f"t{i}" for i in range(30, 38))


def test_a_full_queue_refuses_at_once(engine):
  engine.gate.clear()
  scheduler = _scheduler(engine, queue_size=2)
  try:
    _submit(scheduler, "one", temperature=0.5, seed=1)  # decoding, not queued
    while not engine.decodes:
      time.sleep(0.001)
    queued = [_submit(scheduler, "one", temperature=0.5, seed=1) for _ in range(2)]
    with pytest.raises(QueueFull, match=r"2 requests are waiting \(limit queue_size=2\)"):
      _submit(scheduler, "one")
    engine.gate.set()
    assert all(c.finished.wait(10) for _, c in queued)
    _submit(scheduler, "one")[1].finished.wait(10)  # room again
  finally:
    scheduler.stop()


def test_late_requests_time_out_and_cancelled_rows_stop_the_decode(engine):
  engine.gate.clear()
  scheduler = _scheduler(engine, request_timeout_s=0.2)
  try:
    running = _submit(scheduler, "long")
    while not engine.decodes:
      time.sleep(0.001)
    late = _submit(scheduler, "one")
    time.sleep(0.3)
    engine.gate.set()
    assert late[1].finished.wait(10) and running[1].finished.wait(10)
  finally:
    scheduler.stop()
  for _, collector in (running, late):  # the running one timed out at its first step
    failed = collector.events[-1]
    assert isinstance(failed, Failed) and failed.status == 504
    assert "limit request_timeout_s=0.2" in failed.message
  assert engine.decodes[0][1] == 1  # no row left: the decode stopped after one step
  assert len(engine.decodes) == 1  # the late one never reached the engine

  engine = ScriptedEngine()
  engine.gate.clear()
  scheduler = _scheduler(engine)
  try:
    job, collector = _submit(scheduler, "long")
    while not engine.decodes:
      time.sleep(0.001)
    job.cancel()
    engine.gate.set()
    assert _submit(scheduler, "one")[1].finished.wait(10)  # decoded after the cancelled one
  finally:
    scheduler.stop()
  assert engine.decodes[0][1] == 1 and collector.events == []


def test_a_failed_decode_fails_its_rows_and_the_thread_keeps_serving(engine):
  scheduler = _scheduler(engine)
  try:
    boom = _submit(scheduler, "boom")
    assert boom[1].finished.wait(10)
    ok = _submit(scheduler, "one")
    assert ok[1].finished.wait(10)
  finally:
    scheduler.stop()
  assert boom[1].events[-1] == Failed(500, "decoding failed: RuntimeError: the accelerator "
                                            "caught fire")
  assert ok[1].events[-1].result["tokens"] == [11, 12]
  # A decode that fails part-way: rows that already finished keep their answer, alone.
  engine.gate.clear()
  scheduler = _scheduler(engine)
  try:
    blocker = _submit(scheduler, "one", temperature=0.5, seed=1)
    while len(engine.decodes) < 3:
      time.sleep(0.001)
    finished, broken = _submit(scheduler, "one"), _submit(scheduler, "breaks")
    engine.gate.set()
    assert all(c.finished.wait(10) for _, c in (blocker, finished, broken))
  finally:
    scheduler.stop()
  assert engine.decodes[-1][0] == ["one", "breaks"]
  assert [type(e) for e in finished[1].events] == [Token, Token, Done]
  assert broken[1].events[-1] == Failed(500, "decoding failed: RuntimeError: lost the device")


def test_stop_fails_the_queued_requests(engine):
  engine.gate.clear()
  scheduler = _scheduler(engine)
  running = _submit(scheduler, "one", temperature=0.5, seed=1)
  while not engine.decodes:
    time.sleep(0.001)
  queued = _submit(scheduler, "two", temperature=0.5, seed=2)
  threading.Timer(0.1, engine.gate.set).start()
  scheduler.stop()
  assert queued[1].events == [Failed(503, "the server is shutting down")]
  assert isinstance(running[1].events[-1], Done)
  with pytest.raises(QueueFull, match="shutting down"):
    _submit(scheduler, "one")


def _body(prompt):
  image = client_lib.image_data_url(np.zeros((4, 4, 3), np.uint8))
  return json.dumps({"images": [image], "prompt": prompt}).encode()


def test_busy_and_late_requests_over_http(engine):
  """503 with Retry-After when the queue is full, 504 when a request waits too long, and the
  stream of a late request ends with an error event."""
  engine.gate.clear()
  scheduler = Scheduler(engine, Batching(queue_size=1, request_timeout_s=0.5, batch_wait_s=0))
  app = create_app(engine, Limits().for_model(engine.model), scheduler)
  with ServerThread(app) as server:
    client = client_lib.Client(server.url, timeout=30)
    results = {}
    first = threading.Thread(target=lambda: results.update(
        first=client.post("/api/complete", _body("long"))))
    first.start()
    while not engine.decodes:
      time.sleep(0.001)
    second = threading.Thread(target=lambda: results.update(
        second=client.post("/api/complete", _body("one"))))
    second.start()
    while scheduler.queued < 1:
      time.sleep(0.001)
    status, body = client.post("/api/complete", _body("two"))
    assert status == 503 and "limit queue_size=1" in body["error"]
    with pytest.raises(client_lib.ServerError) as info:
      list(client.stream(json.loads(_body("two"))))
    assert info.value.status == 503
    time.sleep(0.6)
    engine.gate.set()
    first.join(10)
    second.join(10)
    for name in ("first", "second"):
      status, body = results[name]
      assert status == 504 and "request_timeout_s=0.5" in body["error"], (name, body)
    engine.gate.clear()
    events = []

    def stream_late():
      try:
        events.extend(client.stream(json.loads(_body("long"))))
      except client_lib.ServerError as e:
        events.append(e)

    streamer = threading.Thread(target=stream_late)
    streamer.start()
    time.sleep(0.6)
    engine.gate.set()
    streamer.join(10)
    assert isinstance(events[-1], client_lib.ServerError) and events[-1].status == 504
    assert client.complete(json.loads(_body("one")))["tokens"] == [11, 12]  # still serving


def test_a_stopped_scheduler_starts_again(engine):
  """An app served twice (the load test serves each app once per repeat) restarts its thread."""
  scheduler = _scheduler(engine)
  assert _submit(scheduler, "one")[1].finished.wait(10)
  scheduler.stop()
  scheduler.start()
  try:
    _, collector = _submit(scheduler, "two")
    assert collector.finished.wait(10) and collector.events[-1].result["tokens"][0] == 21
  finally:
    scheduler.stop()
