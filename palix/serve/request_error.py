"""The one exception of request handling: an HTTP status and a message for the client."""


class RequestError(Exception):
  """A request the server refuses; ``status`` is the HTTP code (4xx: the client's fault, 503: busy,
  504: timed out) and ``message`` says what and which limit."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message
