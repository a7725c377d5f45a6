"""Looking at batches: token ids back to text, and a PNG grid with detection boxes drawn."""

import textwrap
from typing import List, Mapping, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from palix import loc_tokens

BOX_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
              (70, 240, 240), (240, 50, 230), (128, 128, 0))


def tokens_to_text(vocabulary, tokens) -> str:
  """Token ids -> text, stopping at the first EOS (1) and dropping padding (0)."""
  ids = []
  for token in np.asarray(tokens).tolist():
    if token == 1:
      break
    if token != 0:
      ids.append(token)
  return vocabulary.decode(ids)


def batch_texts(batch: Mapping[str, np.ndarray], vocabulary) -> List[Tuple[str, str]]:
  """``(prompt, target)`` of every row of a batch."""
  return [(tokens_to_text(vocabulary, inputs), tokens_to_text(vocabulary, targets))
          for inputs, targets in zip(batch["encoder_input_tokens"],
                                     batch["decoder_target_tokens"])]


def to_uint8(image: np.ndarray) -> np.ndarray:
  """[-1, 1] float -> uint8."""
  return np.clip(np.round((np.asarray(image) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _cell(images, mask, target, cell: int, text_lines: List[str]) -> Image.Image:
  valid = [to_uint8(im) for im, m in zip(images, mask) if m]
  font = ImageFont.load_default(size=10)
  line_height = 12
  canvas = Image.new("RGB", (cell, cell + line_height * len(text_lines) + 4), (255, 255, 255))
  if valid:
    if len(valid) == 1:
      picture = Image.fromarray(valid[0]).resize((cell, cell), Image.NEAREST)
    else:  # frames of a clip (or several images): a square mosaic in reading order
      side = int(np.ceil(np.sqrt(len(valid))))
      tile = cell // side
      picture = Image.new("RGB", (cell, cell), (255, 255, 255))
      for k, frame in enumerate(valid):
        picture.paste(Image.fromarray(frame).resize((tile - 1, tile - 1), Image.NEAREST),
                      ((k % side) * tile, (k // side) * tile))  # 1 px white gap between frames
    canvas.paste(picture, (0, 0))
    if len(valid) == 1:
      draw = ImageDraw.Draw(canvas)
      for k, found in enumerate(loc_tokens.parse_detections(target)):
        ymin, xmin, ymax, xmax = (c * cell for c in found.box)
        color = BOX_COLORS[k % len(BOX_COLORS)]
        draw.rectangle([xmin, ymin, xmax - 1, ymax - 1], outline=color, width=2)
        draw.text((xmin + 2, max(ymin - 12, 0)), found.label, fill=color, font=font)
  draw = ImageDraw.Draw(canvas)
  for k, line in enumerate(text_lines):
    draw.text((2, cell + 2 + k * line_height), line, fill=(0, 0, 0), font=font)
  return canvas


def render_grid(batch: Mapping[str, np.ndarray], texts: List[Tuple[str, str]], path: str,
                columns: int = 4, cell: int = 192) -> None:
  """Writes a PNG: per example its image(s), boxes parsed from the target, prompt and target."""
  width_chars = max(cell // 5, 10)
  cells = []
  for row, (prompt, target) in enumerate(texts):
    shown_target = target
    found = loc_tokens.parse_detections(target)
    if found:
      shown_target = " ; ".join(d.label for d in found) + f"  ({len(found)} boxes)"
    lines = (textwrap.wrap("> " + prompt, width_chars)[:3]
             + textwrap.wrap("= " + shown_target, width_chars)[:3])
    cells.append(_cell(batch["images"][row], batch["image_mask"][row], target, cell, lines))
  rows = int(np.ceil(len(cells) / columns))
  cell_height = max(c.size[1] for c in cells)
  grid = Image.new("RGB", (columns * (cell + 4), rows * (cell_height + 4)), (200, 200, 200))
  for k, c in enumerate(cells):
    grid.paste(c, ((k % columns) * (cell + 4), (k // columns) * (cell_height + 4)))
  grid.save(path)
