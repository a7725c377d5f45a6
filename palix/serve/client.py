"""A small Python client of the ``palix serve`` API (standard library only).

    client = Client("http://127.0.0.1:8000/")
    client.complete({"images": [image_data_url(pixels)], "prompt": "caption en"})
    for event, data in client.stream({...}):   # ("token", {...}) ..., then ("done", {...})
      ...

Errors come back as :class:`ServerError` with the HTTP status and the server's message.
"""

import base64
import http.client
import io
import json
import urllib.parse
from typing import Iterator, Tuple

import numpy as np


class ServerError(Exception):
  def __init__(self, status: int, message: str):
    super().__init__(f"{status}: {message}")
    self.status = status
    self.message = message


def image_data_url(pixels: np.ndarray, image_format: str = "PNG") -> str:
  """A ``data:`` URL of an ``[H, W, 3]`` uint8 image (Pillow encodes it)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format=image_format)
  encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
  return f"data:image/{image_format.lower()};base64,{encoded}"


class Client:
  """Talks to one server; each call opens its own connection (safe to share across threads)."""

  def __init__(self, url: str, timeout: float = 120.0):
    parts = urllib.parse.urlsplit(url)
    self.host, self.port = parts.hostname, parts.port or 80
    self.timeout = timeout

  def _connection(self) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

  def post(self, path: str, body: bytes,
           content_type: str = "application/json") -> Tuple[int, dict]:
    """POSTs raw bytes; returns ``(status, JSON body)`` whatever the status."""
    connection = self._connection()
    try:
      connection.request("POST", path, body=body, headers={"Content-Type": content_type})
      response = connection.getresponse()
      return response.status, json.loads(response.read() or b"{}")
    finally:
      connection.close()

  def info(self) -> dict:
    connection = self._connection()
    try:
      connection.request("GET", "/api/info")
      response = connection.getresponse()
      return json.loads(response.read())
    finally:
      connection.close()

  def complete(self, request: dict) -> dict:
    """The answer of ``request``; raises :class:`ServerError` for a 4xx/5xx."""
    status, body = self.post("/api/complete", json.dumps(request).encode())
    if status != 200:
      raise ServerError(status, body.get("error", ""))
    return body

  def stream(self, request: dict) -> Iterator[Tuple[str, dict]]:
    """Yields ``(event, data)`` as the server sends them: ``token`` events, then ``done``. An
    ``error`` event or a refused request raises :class:`ServerError`."""
    connection = self._connection()
    try:
      connection.request("POST", "/api/stream", body=json.dumps(request).encode(),
                         headers={"Content-Type": "application/json"})
      response = connection.getresponse()
      if response.status != 200:
        raise ServerError(response.status, json.loads(response.read()).get("error", ""))
      event, data = None, []
      for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("event:"):
          event = line[len("event:"):].strip()
        elif line.startswith("data:"):
          data.append(line[len("data:"):].strip())
        elif not line and event is not None:  # a blank line ends the event
          payload = json.loads("\n".join(data))
          if event == "error":
            raise ServerError(payload["status"], payload["error"])
          yield event, payload
          if event == "done":  # the last event: the server closes the stream after it
            rest = response.read().strip()
            if rest:
              raise ServerError(200, f"the stream went on after its done event: {rest[:200]!r}")
            return
          event, data = None, []
    finally:
      connection.close()
