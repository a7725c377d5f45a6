"""Run the app under uvicorn: ``serve`` (``palix serve``) and ``ServerThread`` (tests, benchmarks).

``serve`` builds everything from gin: the Generator (``gin/runs/prompt.gin``: ``MODEL`` and
``CHECKPOINT_PATH``), the :class:`~palix.serve.limits.Limits` and the
:class:`~palix.serve.scheduler.Batching`; ``gin/runs/serve.gin`` binds the defaults.
"""

import logging
import socket
import sys
import threading
from typing import Optional

import gin
import uvicorn

from palix import generate
from palix.serve.app import create_app
from palix.serve.engine import DecodeEngine
from palix.serve.limits import Limits
from palix.serve.request import DecodingOptions
from palix.serve.scheduler import Batching, Scheduler

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_app(generator, limits: Optional[Limits] = None, batching: Optional[Batching] = None,
              warm_up: bool = True):
  """The ASGI app for ``generator`` (a :class:`palix.generate.Generator`). ``warm_up`` compiles
  greedy decoding at every batch size now rather than on the first requests."""
  limits = (limits or Limits()).for_model(generator.model)
  batching = batching or Batching()
  engine = DecodeEngine(generator, limits.max_new_tokens, batching.batch_sizes)
  if warm_up:
    engine.warm_up(DecodingOptions(limits.max_new_tokens))
  return create_app(engine, limits, Scheduler(engine, batching))


def bind(host: str, port: int) -> socket.socket:
  """A listening TCP socket (``port=0``: a free port), so the address is known before serving."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
    sock.listen(128)  # connections made before uvicorn starts wait in the backlog
  except OSError as e:
    sock.close()
    raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from e
  return sock


def url_of(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@gin.configurable
def serve(host: str = "127.0.0.1", port: int = 8000, limits: Optional[Limits] = None,
          batching: Optional[Batching] = None, warm_up: bool = True) -> None:
  """Loads the gin-configured checkpoint and serves it until interrupted (Ctrl-C)."""
  sock = bind(host, port)
  if host not in LOOPBACK:
    print(f"palix serve: warning: listening on {host}, reachable from other machines; the server "
          "has no authentication", file=sys.stderr)
  generator = generate.load_generator()
  app = build_app(generator, limits, batching, warm_up)
  print(f"palix serve: {url_of(sock)} (Ctrl-C stops)", flush=True)
  uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


class ServerThread:
  """Serves ``app`` on a loopback port from a background thread (``with ServerThread(app) as s:``
  ... ``s.url``); stops on exit."""

  def __init__(self, app, host: str = "127.0.0.1"):
    self._sock = bind(host, 0)
    self.url = url_of(self._sock)
    self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                    name="palix-serve", daemon=True)

  def __enter__(self):
    self._thread.start()
    while not self._server.started:
      if not self._thread.is_alive():
        raise RuntimeError("the server thread ended before it started serving")
      self._thread.join(0.01)
    return self

  def __exit__(self, *exc):
    self._server.should_exit = True
    self._thread.join(30)
    self._sock.close()
