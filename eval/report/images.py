"""Sample images for the report: model pixels -> uint8 PNG, small images enlarged, boxes drawn."""

from typing import List, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from palix.eval.report.sample import ReportBox

PREDICTED_COLOR = (228, 87, 46)  # orange-red
TARGET_COLOR = (22, 163, 74)  # green
MIN_DISPLAY_SIDE = 320  # smaller images are enlarged (nearest neighbour) so boxes stay readable


def split_images(index: int, image) -> List[np.ndarray]:
  """One image or several (``[N, H, W, C]`` or a list) -> list of ``[H, W, C]`` arrays."""
  if image is None:
    return []
  if isinstance(image, (list, tuple)):
    return [a for item in image for a in split_images(index, item)]
  array = np.asarray(image)
  if array.ndim == 4:
    return [array[i] for i in range(array.shape[0])]
  if array.ndim in (2, 3):
    return [array]
  raise ValueError(f"sample {index}: an image must be [H, W], [H, W, C] or [N, H, W, C]; "
                   f"got shape {array.shape}")


def to_uint8(index: int, image: np.ndarray) -> np.ndarray:
  """Float pixels in [-1, 1] (the model's range) or uint8 -> uint8 ``[H, W, 3]``."""
  array = np.asarray(image)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = np.stack([array] * 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) == 0:
    raise ValueError(f"sample {index}: image shape {np.asarray(image).shape} is not [H, W, 1|3|4]")
  array = array[..., :3]
  if array.dtype == np.uint8:
    return array
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"sample {index}: image dtype {array.dtype} must be uint8 or float in [-1, 1]")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"sample {index}: image has NaN or infinite pixels")
  low, high = float(array.min()), float(array.max())
  if low < -1.001 or high > 1.001:
    raise ValueError(f"sample {index}: float pixels must be in [-1, 1]; "
                     f"got [{low:.3g}, {high:.3g}] (pass uint8 for 0..255 images)")
  return np.round((np.clip(array, -1, 1) + 1) * 127.5).astype(np.uint8)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
    return ImageFont.load_default()


def _draw_boxes(draw: ImageDraw.ImageDraw, boxes: Sequence[ReportBox], color, width: int,
                height: int, line: int, font, label_below: bool) -> None:
  """Rectangles with a filled caption: above the box (predictions) or below it (targets), so
  a prediction and its target do not hide each other's labels."""
  for box in boxes:
    ymin, xmin, ymax, xmax = (min(max(c, 0.0), 1.0) for c in box.box)
    x0, y0, x1, y1 = xmin * width, ymin * height, xmax * width, ymax * height
    draw.rectangle([x0, y0, max(x1, x0), max(y1, y0)], outline=color, width=line)
    caption = box.label if box.score is None else f"{box.label} {box.score:.2f}"
    if caption:
      left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
      text_w, text_h = right - left + 6, bottom - top + 4
      if label_below:
        ty = y1 if y1 + text_h <= height else max(y1 - text_h, 0)
      else:
        ty = y0 - text_h if y0 - text_h >= 0 else y0
      tx = min(x0, max(width - text_w, 0))
      draw.rectangle([tx, ty, tx + text_w, ty + text_h], fill=color)
      draw.text((tx + 3 - left, ty + 2 - top), caption, fill=(255, 255, 255), font=font)


def render_png(index: int, image: np.ndarray, path: str, *, predicted_boxes=(),
               target_boxes=()) -> None:
  """Write one image as PNG, enlarged if small, with target (green) and predicted (orange) boxes."""
  pixels = to_uint8(index, image)
  picture = Image.fromarray(pixels, "RGB")
  factor = max(1, int(np.ceil(MIN_DISPLAY_SIDE / max(picture.size))))
  if factor > 1:
    picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
  if predicted_boxes or target_boxes:
    draw = ImageDraw.Draw(picture)
    line = max(2, round(max(picture.size) / 160))
    font = _font(max(11, round(max(picture.size) / 28)))
    _draw_boxes(draw, target_boxes, TARGET_COLOR, picture.width, picture.height, line, font,
                label_below=True)
    _draw_boxes(draw, predicted_boxes, PREDICTED_COLOR, picture.width, picture.height, line,
                font, label_below=False)
  picture.save(path, format="PNG")
