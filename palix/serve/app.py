"""The HTTP side of ``palix serve``: Starlette routes over a ``palix.serve.scheduler.Scheduler``.

* ``GET /`` the page (``static/index.html``, ``app.js``, ``style.css`` under ``/static``);
* ``GET /api/info`` the model's geometry, the limits and the batching settings;
* ``POST /api/complete`` a JSON request (:mod:`palix.serve.request`) -> the JSON answer
  ``{"text", "tokens", "truncated", "boxes", "batch_size", "queue_s", "decode_s"}``;
* ``POST /api/stream`` the same request -> server-sent events: ``token`` (``{"token", "delta",
  "text"}``) per decoded token, then ``done`` (the JSON answer) or ``error`` (``{"status",
  "error"}``).

Errors are JSON ``{"error": message}`` with a 4xx/5xx status; a request that fails validation is
refused before anything is queued, and a stream that fails later ends with an ``error`` event.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from palix.serve import request as request_lib
from palix.serve.engine import DecodeEngine
from palix.serve.limits import Limits
from palix.serve.request_error import RequestError
from palix.serve.scheduler import Done, Failed, QueueFull, Scheduler, Token

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# How long a handler waits past a request's deadline for the decode thread to report it.
_DEADLINE_GRACE_S = 2.0


class _Events:
  """Events from the decode thread, delivered into the handler's event loop."""

  def __init__(self):
    self._loop = asyncio.get_running_loop()
    self._queue = asyncio.Queue()

  def emit(self, event):
    with contextlib.suppress(RuntimeError):  # the loop closed: the server is shutting down
      self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

  async def next(self, deadline: float):
    timeout = deadline - time.monotonic() + _DEADLINE_GRACE_S
    try:
      return await asyncio.wait_for(self._queue.get(), max(timeout, 0.0))
    except asyncio.TimeoutError:
      return Failed(504, "the request timed out waiting for the decoder (limit "
                         "request_timeout_s)")


def create_app(engine: DecodeEngine, limits: Limits, scheduler: Scheduler) -> Starlette:
  """The ASGI app; starting it (uvicorn's lifespan) starts the scheduler's decode thread."""
  model = engine.model

  async def read_body(request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
      raise RequestError(413, f"the request body is {declared} bytes; the limit is "
                              f"max_request_bytes={limits.max_request_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
      size += len(chunk)
      if size > limits.max_request_bytes:
        raise RequestError(413, f"the request body is over {limits.max_request_bytes} bytes "
                                f"(limit max_request_bytes={limits.max_request_bytes})")
      chunks.append(chunk)
    return b"".join(chunks)

  def prepare(body: bytes):
    parsed = request_lib.parse_request(body, limits)
    try:
      return engine.encode(parsed), parsed.options
    except ValueError as e:  # the Generator's checks: prompt tokens vs max_input_len, ...
      raise RequestError(400, str(e)) from e

  async def submit(request):
    arrived = time.monotonic()
    inputs, options = await run_in_threadpool(prepare, await read_body(request))
    events = _Events()
    job = scheduler.new_job(inputs, options, events.emit, arrived)
    try:
      scheduler.submit(job)
    except QueueFull as e:
      raise RequestError(503, str(e)) from e
    return job, events

  async def complete(request):
    job, events = await submit(request)
    try:
      while True:
        event = await events.next(job.deadline)
        if isinstance(event, Done):
          return JSONResponse(event.result)
        if isinstance(event, Failed):
          raise RequestError(event.status, event.message)
    finally:
      job.cancel()  # a no-op once done; otherwise frees the row

  async def stream(request):
    job, events = await submit(request)

    async def frames():
      try:
        while True:
          event = await events.next(job.deadline)
          if isinstance(event, Token):
            yield _sse("token", dataclasses.asdict(event))
          elif isinstance(event, Done):
            yield _sse("done", event.result)
            return
          elif isinstance(event, Failed):
            yield _sse("error", {"status": event.status, "error": event.message})
            return
      finally:
        job.cancel()  # the client went away (or the answer is complete)

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})

  async def info(request):
    del request
    return JSONResponse({
        "model": {"num_images": model.num_images, "image_size": model.image_size,
                  "max_input_len": model.max_input_len, "max_target_len": model.max_target_len,
                  "interleaved_examples": model.config.segment_separator_id is not None},
        "limits": dataclasses.asdict(limits),
        "batching": {"batch_sizes": list(engine.batch_sizes),
                     "queue_size": scheduler.batching.queue_size,
                     "request_timeout_s": scheduler.batching.request_timeout_s,
                     "queued": scheduler.queued},
    })

  async def page(request):
    del request
    return FileResponse(os.path.join(STATIC_DIR, "index.html"))

  async def request_error(request, error: RequestError):
    del request
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)

  async def http_error(request, error: HTTPException):
    return JSONResponse({"error": f"{request.method} {request.url.path}: {error.detail}"},
                        status_code=error.status_code, headers=error.headers)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    scheduler.start()
    try:
      yield
    finally:
      await run_in_threadpool(scheduler.stop)

  app = Starlette(
      routes=[Route("/", page), Route("/api/info", info),
              Route("/api/complete", complete, methods=["POST"]),
              Route("/api/stream", stream, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")],
      exception_handlers={RequestError: request_error, HTTPException: http_error},
      lifespan=lifespan)
  app.state.engine, app.state.scheduler = engine, scheduler  # for benchmarks and inspection
  return app


def _sse(event: str, data) -> str:
  return f"event: {event}\ndata: {json.dumps(data)}\n\n"
