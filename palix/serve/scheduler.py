"""The request queue and the decode thread: compatible requests share one batched decode.

Requests wait in a bounded queue (a full queue is refused at once with 503 rather than letting
latency grow without bound). One thread decodes: it takes the oldest request, adds every queued
request with the same ``DecodingOptions.batch_key`` (up to the engine's largest batch size, oldest
first), decodes them together and sends each row its tokens as they come. Requests that arrive
while a batch decodes wait for the next one (no joining a running decode: its cache is sized and
filled for the rows it started with).

A request's deadline (``request_timeout_s`` after it arrived) is checked when it is picked and at
every step: a late request gets a 504 and its row is dropped from the decode. A cancelled request
(its client went away) is dropped the same way; the decode stops when no row is left.
"""

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, List, Optional

import gin
import jax

from palix.serve.answer import Answer
from palix.serve.engine import DecodeEngine
from palix.serve.request import DecodingOptions

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Batching:
  """How ``palix serve`` queues and batches requests (bind e.g. ``Batching.queue_size = 16``).

  Attributes:
    batch_sizes: the compiled batch sizes; the largest is the most requests one decode serves.
      ``(1,)`` turns batching off (one request per decode).
    queue_size: requests that may wait; one more gets 503.
    request_timeout_s: a request not finished this long after it arrived gets 504.
    batch_wait_s: after picking a request, wait this long for compatible ones to arrive when the
      queue holds fewer than a full batch (0: decode at once).
    sampling_seed: seeds the random keys of unseeded sampled requests (one key per decode).
  """
  batch_sizes: tuple = (1, 2, 4, 8)
  queue_size: int = 64
  request_timeout_s: float = 60.0
  batch_wait_s: float = 0.002
  sampling_seed: int = 0

  def __post_init__(self):
    if self.queue_size < 1 or self.request_timeout_s <= 0 or self.batch_wait_s < 0:
      raise ValueError(f"Batching needs queue_size >= 1, request_timeout_s > 0 and "
                       f"batch_wait_s >= 0; got {self}")


# Events sent to a request's ``emit`` callback, from the decode thread.
@dataclasses.dataclass(frozen=True)
class Token:
  token: int
  delta: str  # new text ("" for a pad or a piece that adds no text yet)
  text: str  # the whole answer so far


@dataclasses.dataclass(frozen=True)
class Done:
  result: dict  # Answer.result() plus timings and the decode's batch size


@dataclasses.dataclass(frozen=True)
class Failed:
  status: int
  message: str


@dataclasses.dataclass(eq=False)
class Job:
  """One request in the queue: its model inputs, options and where its events go."""
  inputs: dict
  options: DecodingOptions
  emit: Callable[[object], None]
  deadline: float
  arrived: float = dataclasses.field(default_factory=time.monotonic)
  cancelled: bool = False
  finished: bool = False  # its Done or Failed event was sent

  def cancel(self):
    """The client went away: the decode thread drops the row at its next step."""
    self.cancelled = True

  def finish(self, event) -> None:
    """Sends the last event (Done or Failed)."""
    self.finished = True
    self.emit(event)


class QueueFull(Exception):
  pass


class Scheduler:
  """Owns the queue and the decode thread (``start``/``stop``)."""

  def __init__(self, engine: DecodeEngine, batching: Batching):
    self.engine = engine
    self.batching = batching
    self._queue = collections.deque()
    self._cond = threading.Condition()
    self._thread: Optional[threading.Thread] = None
    self._stopping = False
    self._rng = jax.random.PRNGKey(batching.sampling_seed)
    self._decodes = 0

  # --- the client side ----------------------------------------------------------------------
  def new_job(self, inputs: dict, options: DecodingOptions, emit,
              arrived: Optional[float] = None) -> Job:
    """A job whose deadline is ``request_timeout_s`` after ``arrived`` (``time.monotonic()``,
    default now)."""
    arrived = time.monotonic() if arrived is None else arrived
    return Job(inputs, options, emit, arrived + self.batching.request_timeout_s, arrived)

  def submit(self, job: Job) -> None:
    """Queues ``job``; raises :class:`QueueFull` when ``queue_size`` requests already wait."""
    with self._cond:
      if self._stopping:
        raise QueueFull("the server is shutting down")
      if len(self._queue) >= self.batching.queue_size:
        raise QueueFull(f"the server is busy: {len(self._queue)} requests are waiting (limit "
                        f"queue_size={self.batching.queue_size}); retry later")
      self._queue.append(job)
      self._cond.notify()

  @property
  def queued(self) -> int:
    return len(self._queue)

  # --- the decode thread --------------------------------------------------------------------
  def start(self) -> None:
    """Starts the decode thread (again after ``stop``: the app may be served more than once)."""
    self._stopping = False
    self._thread = threading.Thread(target=self._loop, name="palix-decode", daemon=True)
    self._thread.start()

  def stop(self, timeout: float = 30.0) -> None:
    """Finishes the running decode, fails the queued requests (503) and ends the thread."""
    with self._cond:
      self._stopping = True
      waiting, self._queue = list(self._queue), collections.deque()
      self._cond.notify_all()
    for job in waiting:
      job.finish(Failed(503, "the server is shutting down"))
    if self._thread is not None:
      self._thread.join(timeout)

  def _loop(self):
    while True:
      group = self._next_group()
      if group is None:
        return
      try:
        self._decode(group)
      except Exception as e:  # pylint: disable=broad-except  # keep serving the next requests
        log.exception("decode failed")
        for job in group:
          if not job.cancelled and not job.finished:
            job.finish(Failed(500, f"decoding failed: {type(e).__name__}: {e}"))

  def _next_group(self) -> Optional[List[Job]]:
    """Waits for a request; returns it with the compatible queued ones (None when stopping)."""
    with self._cond:
      while not self._queue and not self._stopping:
        self._cond.wait()
      limit = self.engine.max_batch_size
      end = time.monotonic() + self.batching.batch_wait_s
      while 0 < len(self._queue) < limit and not self._stopping:  # let a burst arrive
        remaining = end - time.monotonic()
        if remaining <= 0:
          break
        self._cond.wait(remaining)
      if self._stopping:
        return None
      key = self._queue[0].options.batch_key()
      group = [job for job in self._queue if job.options.batch_key() == key][:limit]
      for job in group:
        self._queue.remove(job)
    now = time.monotonic()
    live = []
    for job in group:
      if job.cancelled:
        continue
      if now > job.deadline:
        job.finish(Failed(504, self._timeout_message(job, now)))
      else:
        live.append(job)
    return live

  def _timeout_message(self, job: Job, now: float) -> str:
    return (f"the request timed out after {now - job.arrived:.1f} s (limit request_timeout_s="
            f"{self.batching.request_timeout_s}); {len(self._queue)} requests are waiting")

  def _decode(self, group: List[Job]):
    if not group:
      return
    start = time.monotonic()
    self._decodes += 1
    eos_id = self.engine.model.eos_id
    answers = [Answer(self.engine.generator.detokenize, eos_id, job.options.max_new_tokens)
               for job in group]
    rng = jax.random.fold_in(self._rng, self._decodes)
    steps = self.engine.stream([job.inputs for job in group], [job.options for job in group],
                               rng)
    active = set(range(len(group)))
    try:
      for tokens in steps:
        now = time.monotonic()
        for row in sorted(active):
          job, answer, token = group[row], answers[row], int(tokens[row])
          if job.cancelled:
            active.discard(row)
          elif now > job.deadline:
            job.finish(Failed(504, self._timeout_message(job, now)))
            active.discard(row)
          else:
            delta = answer.add(token)
            if delta is not None:  # the token joined the answer (not EOS or padding)
              job.emit(Token(token, delta, answer.text))
            if answer.finished:
              job.finish(self._done(job, answer, len(group), start, now))
              active.discard(row)
        if not active:
          break
    finally:
      steps.close()
    for row in active:  # the decoder ran out of cache before the row finished: not expected,
      # since max_new_tokens <= the cache length, but a row must never be left without an answer
      group[row].finish(self._done(group[row], answers[row], len(group), start,
                                   time.monotonic()))

  @staticmethod
  def _done(job: Job, answer: Answer, batch_size: int, start: float, now: float) -> Done:
    return Done(dict(answer.result(), batch_size=batch_size,
                     queue_s=round(start - job.arrived, 4), decode_s=round(now - start, 4)))
