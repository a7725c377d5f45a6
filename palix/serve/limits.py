"""Bounds on what one request may ask of the server.

Every violation is answered with a 4xx whose message names the field, the value and the limit by
its gin name (e.g. ``max_new_tokens=32``), so a user knows what to change and an operator knows
which binding to raise. ``None`` limits come from the model (``Limits.for_model``).
"""

import dataclasses
from typing import Optional

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-request limits of ``palix serve`` (bind e.g. ``Limits.max_new_tokens = 16``).

  Attributes:
    max_request_bytes: size of the HTTP body (JSON with base64 images).
    max_image_bytes: size of one encoded image file (PNG, JPEG, ...), after base64 decoding.
    max_image_side: width and height of one image, in pixels (checked before decoding pixels).
    max_images: images per request, in-context examples and query together; ``None``: the
      model's ``num_images`` (a larger value is an error: the model has no slot for them).
    max_prompt_chars: characters of the prompt and of each example's prompt and answer (the
      model's ``max_input_len`` in tokens also applies).
    max_new_tokens: upper bound of a request's ``max_new_tokens``; ``None``: the model's
      ``max_target_len``. Also the length of the decode cache.
    max_temperature: upper bound of ``temperature`` (0 is greedy).
    max_top_k: upper bound of ``top_k`` (0 keeps every token).
  """
  max_request_bytes: int = 16 * 2**20
  max_image_bytes: int = 8 * 2**20
  max_image_side: int = 4096
  max_images: Optional[int] = None
  max_prompt_chars: int = 1000
  max_new_tokens: Optional[int] = None
  max_temperature: float = 2.0
  max_top_k: int = 1000

  def for_model(self, model) -> "Limits":
    """These limits with ``None`` filled from ``model``; raises ValueError if a limit exceeds
    what the model can take."""
    max_images = self.max_images if self.max_images is not None else model.num_images
    max_new_tokens = (self.max_new_tokens if self.max_new_tokens is not None
                      else model.max_target_len)
    if max_images > model.num_images:
      raise ValueError(f"Limits.max_images={max_images} but the model has num_images="
                       f"{model.num_images} image slots")
    for name in ("max_request_bytes", "max_image_bytes", "max_image_side", "max_prompt_chars"):
      if getattr(self, name) < 1:
        raise ValueError(f"Limits.{name} must be >= 1; got {getattr(self, name)}")
    if max_images < 1 or max_new_tokens < 1:
      raise ValueError(f"Limits.max_images and Limits.max_new_tokens must be >= 1; got "
                       f"{max_images} and {max_new_tokens}")
    if self.max_temperature < 0 or self.max_top_k < 0:
      raise ValueError(f"Limits.max_temperature and Limits.max_top_k must be >= 0; got "
                       f"{self.max_temperature} and {self.max_top_k}")
    return dataclasses.replace(self, max_images=max_images, max_new_tokens=max_new_tokens)
