"""Real objects cut out of real images, and pasting them onto canvases with exact boxes.

A sprite is ``(rgb [h, w, 3] uint8, alpha [h, w] in [0, 1], label)``. Its crop is the bounding
box of its visible pixels (alpha >= 0.5), so a sprite pasted at ``(top, left)`` occupies exactly
the pixel box ``[top, top + h) x [left, left + w)``: boxes are known by construction.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from palix.tasks.sources import easy_vqa
from palix.tasks.sources import fashion_mnist

# Dark tints for the (greyscale) clothing items, so they stand out on pale canvases.
FASHION_TINTS = ((40, 40, 40), (20, 40, 110), (20, 90, 40), (120, 30, 30), (90, 50, 120))


@dataclasses.dataclass(frozen=True)
class Sprite:
  rgb: np.ndarray    # uint8 [h, w, 3]
  alpha: np.ndarray  # float [h, w]
  label: str         # class name used in detection prompts/targets
  color: str = ""    # colour name where known (easy-VQA shapes)

  @property
  def size(self) -> Tuple[int, int]:
    return self.rgb.shape[0], self.rgb.shape[1]


def _crop_visible(rgb: np.ndarray, alpha: np.ndarray, label: str, color: str = "") -> Sprite:
  ys, xs = np.nonzero(alpha >= 0.5)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  return Sprite(rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1], label, color)


def shape_sprite(split: str, image_id: int) -> Sprite:
  """The coloured shape of easy-VQA image ``image_id``; label is the shape name."""
  rgb, alpha, shape, color = easy_vqa.sprite(split, image_id)
  return Sprite(rgb, alpha, shape, color)


def fashion_sprite(split: str, index: int, rng: np.random.Generator,
                   scale: float = 1.0) -> Sprite:
  """Fashion-MNIST item ``index``, optionally scaled, tinted dark; label is its class name."""
  images, labels = fashion_mnist.load(split)
  grey = images[index]
  if scale != 1.0:
    side = max(1, int(round(28 * scale)))
    grey = np.asarray(Image.fromarray(grey).resize((side, side), Image.BILINEAR))
  alpha = grey.astype(np.float64) / 255.0
  tint = np.array(FASHION_TINTS[rng.integers(len(FASHION_TINTS))], np.float64)
  shade = 1.4 - 0.7 * alpha  # brighter cloth pixels become darker tint: keeps the texture
  rgb = np.clip(tint[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
  return _crop_visible(rgb, alpha, fashion_mnist.CLASS_NAMES[int(labels[index])])


def paste(canvas: np.ndarray, sprite: Sprite, top: int, left: int) -> None:
  """Alpha-blends ``sprite`` onto ``canvas`` (in place) with its top-left at ``(top, left)``."""
  h, w = sprite.size
  region = canvas[top:top + h, left:left + w].astype(np.float64)
  alpha = sprite.alpha[..., None]
  blended = region * (1 - alpha) + sprite.rgb.astype(np.float64) * alpha
  canvas[top:top + h, left:left + w] = np.round(blended).astype(np.uint8)


def pale_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A uniform pale canvas like easy-VQA's backgrounds (each channel in [200, 255])."""
  color = rng.integers(200, 256, size=3)
  return np.broadcast_to(color.astype(np.uint8), (height, width, 3)).copy()


def free_corner(rng: np.random.Generator, size: Tuple[int, int],
                occupied: Sequence[Tuple[int, int, int, int]], height: int, width: int,
                gap: int = 2, tries: int = 50) -> Optional[Tuple[int, int]]:
  """A random top-left corner for a box of ``size`` that stays ``gap`` pixels away from the
  ``occupied`` ``(top, left, bottom, right)`` boxes, or None after ``tries`` attempts."""
  h, w = size
  if h > height or w > width:
    return None
  for _ in range(tries):
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    if all(top + h + gap <= y0 or y1 + gap <= top or left + w + gap <= x0 or x1 + gap <= left
           for y0, x0, y1, x1 in occupied):
      return top, left
  return None
