"""Uploaded images: base64 text (optionally a ``data:`` URL) -> an RGB ``uint8`` array.

Pillow reads the header first, so an image whose width or height is over the limit is refused
before its pixels are decoded (a small file can declare a huge image).
"""

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from palix.serve.limits import Limits
from palix.serve.request_error import RequestError

_DATA_URL = re.compile(r"^data:([^,;]*)(;[^,]*)?,")


def decode_image(data: str, limits: Limits, where: str) -> np.ndarray:
  """``[H, W, 3]`` uint8 pixels of the base64 image ``data``; ``where`` names it in errors
  (e.g. ``images[0]``). Raises :class:`RequestError` (400, 413 or 415)."""
  match = _DATA_URL.match(data)
  if match:
    media_type, parameters = match.group(1), match.group(2) or ""
    if media_type and not media_type.startswith("image/"):
      raise RequestError(415, f"{where}: a {media_type!r} upload is not an image; send a PNG, "
                              "JPEG, GIF, BMP or WebP file")
    if "base64" not in parameters:
      raise RequestError(400, f"{where}: a data URL must be base64-encoded "
                              "(data:image/png;base64,...)")
    data = data[match.end():]
  # An upper bound of the decoded size, checked before decoding the text.
  if len(data) * 3 // 4 > limits.max_image_bytes + 3:
    raise RequestError(413, f"{where} is about {len(data) * 3 // 4} bytes; the limit is "
                            f"max_image_bytes={limits.max_image_bytes}")
  try:
    raw = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise RequestError(400, f"{where}: not valid base64 ({e})") from e
  if len(raw) > limits.max_image_bytes:
    raise RequestError(413, f"{where} is {len(raw)} bytes; the limit is "
                            f"max_image_bytes={limits.max_image_bytes}")
  try:
    image = Image.open(io.BytesIO(raw))
  except UnidentifiedImageError as e:
    raise RequestError(415, f"{where}: not an image file Pillow can read ({len(raw)} bytes); "
                            "send a PNG, JPEG, GIF, BMP or WebP file") from e
  except Image.DecompressionBombError as e:  # Pillow's own bound, far above max_image_side's
    raise RequestError(413, f"{where} declares too many pixels ({e}); the limit is "
                            f"max_image_side={limits.max_image_side} for width and height") from e
  width, height = image.size
  if max(width, height) > limits.max_image_side:
    raise RequestError(413, f"{where} is {width}x{height} pixels; the limit is "
                            f"max_image_side={limits.max_image_side} for width and height")
  try:
    pixels = np.asarray(image.convert("RGB"))
  except (OSError, ValueError) as e:  # truncated or corrupt pixel data
    raise RequestError(415, f"{where}: the {image.format} file is damaged ({e})") from e
  return pixels
