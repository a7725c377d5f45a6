"""Video clips of a real easy-VQA shape moving across a canvas.

Clip ``i`` of a split: ``num_frames`` frames of ``canvas x canvas``; one shape cut from an
easy-VQA image of that split moves ``step`` pixels per frame (2-8) left, right, up or down on a
pale background. Two tasks read it:

* ``kind='vqa'``: ``answer en which way does the {shape} move?`` -> ``left`` / ``right`` / ``up``
  / ``down``;
* ``kind='caption'``: ``caption en`` -> ``a {colour} {shape} moving {direction}``.

Everything about clip ``i`` follows from ``(data_seed, split, i)``. Never flip these clips (the
answer names a direction).
"""

import numpy as np

from palix.tasks import prompts
from palix.tasks.sources import base
from palix.tasks.sources import easy_vqa
from palix.tasks.sources import sprites

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
DEFAULT_SIZES = {"train": 4000, "test": 500}


class MovingShapesSource(base.PythonSource):
  """Moving-shape clips with a direction question or a caption."""

  def __init__(self, kind: str = "vqa", num_examples=None, num_frames: int = 6, canvas: int = 96,
               data_seed: int = 0):
    if kind not in ("vqa", "caption"):
      raise ValueError(f"kind must be 'vqa' or 'caption'; got {kind!r}")
    if num_frames < 2:
      raise ValueError(f"a clip needs at least 2 frames to show motion; got {num_frames}")
    super().__init__(tuple(num_examples or DEFAULT_SIZES), num_examples or DEFAULT_SIZES,
                     data_seed=data_seed, augment_splits=())
    self.kind, self.num_frames, self.canvas = kind, num_frames, canvas

  @property
  def pixel_shape(self):
    return (self.num_frames, self.canvas, self.canvas, 3)

  @property
  def is_video(self) -> bool:
    return True

  def clip(self, split: str, index: int):
    """``(frames uint8 [T, H, W, 3], sprite, direction, [(top, left) per frame])``."""
    rng = self.rng(split, index)
    image_ids = easy_vqa.image_ids(split)
    sprite = sprites.shape_sprite(split, image_ids[int(rng.integers(len(image_ids)))])
    direction = sorted(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    dy, dx = DIRECTIONS[direction]
    h, w = sprite.size
    travel_room = (self.canvas - (h if dy else w)) // (self.num_frames - 1)
    if travel_room < 2:
      raise RuntimeError(f"clip {split}:{index}: shape of {h}x{w} cannot move on a "
                         f"{self.canvas}px canvas over {self.num_frames} frames")
    step = int(rng.integers(2, min(8, travel_room) + 1))
    travel = step * (self.num_frames - 1)
    top = int(rng.integers(0, self.canvas - h - (travel if dy else 0) + 1))
    left = int(rng.integers(0, self.canvas - w - (travel if dx else 0) + 1))
    if dy < 0:
      top += travel
    if dx < 0:
      left += travel
    background = sprites.pale_background(rng, self.canvas, self.canvas)
    frames, corners = [], []
    for t in range(self.num_frames):
      frame = background.copy()
      corner = (top + dy * step * t, left + dx * step * t)
      sprites.paste(frame, sprite, *corner)
      frames.append(frame)
      corners.append(corner)
    return np.stack(frames), sprite, direction, corners

  def make_example(self, split: str, index: int) -> base.PythonExample:
    frames, sprite, direction, _ = self.clip(split, index)
    if self.kind == "vqa":
      return base.PythonExample(
          frames, prompts.vqa_prompt(f"which way does the {sprite.label} move?"), direction)
    return base.PythonExample(frames, prompts.caption_prompt(),
                              f"a {sprite.color} {sprite.label} moving {direction}")
