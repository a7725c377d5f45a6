"""Reading images and video clips from files, with errors that name the file.

Decoding runs in Python (Pillow, and the ffmpeg binary bundled with imageio-ffmpeg for video) so
that a corrupt or missing file raises :class:`DataError` with its path instead of an anonymous
TensorFlow decode error. The data pipeline calls these through ``tf.numpy_function``.
"""

import io
import os
from typing import List, Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


class DataError(ValueError):
  """Bad input data; the message says what is wrong and where (file, line, record)."""


def _to_rgb(image: Image.Image) -> np.ndarray:
  if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
    background = Image.new("RGB", image.size, (255, 255, 255))
    background.paste(image.convert("RGBA"), mask=image.convert("RGBA").split()[-1])
    image = background
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
  """Encoded bytes -> uint8 ``[H, W, 3]``; ``where`` names the origin in errors."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      return _to_rgb(image)
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many types
    raise DataError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


def read_image(path: str) -> np.ndarray:
  """An image file -> uint8 ``[H, W, 3]`` (grey and palette images become RGB)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: image file not found")
  with open(path, "rb") as f:
    return decode_image_bytes(f.read(), path)


def verify_image(path: str) -> None:
  """Cheap load-time check (header and, for PNG, checksums) without a full decode."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: image file not found")
  try:
    with Image.open(path) as image:
      image.verify()
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def uniform_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
  """``num_frames`` indices spread evenly over ``num_available`` (centres of equal segments)."""
  if num_available <= 0:
    raise ValueError("no frames to sample from")
  centres = (np.arange(num_frames) + 0.5) * num_available / num_frames
  return np.minimum(centres.astype(np.int64), num_available - 1)


def read_video(path: str, num_frames: int) -> np.ndarray:
  """``num_frames`` frames sampled uniformly from a clip file or a folder of frame images.

  Returns uint8 ``[num_frames, H, W, 3]``. A folder is read in sorted file-name order.
  """
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
      raise DataError(f"{path}: frame folder has no image files")
    picked = uniform_frame_indices(len(names), num_frames)
    frames = [read_image(os.path.join(path, names[i])) for i in picked]
    if len({f.shape for f in frames}) != 1:
      raise DataError(f"{path}: frames have different sizes {sorted({f.shape for f in frames})}")
    return np.stack(frames)
  if not os.path.isfile(path):
    raise DataError(f"{path}: video file not found")
  frames = _decode_all_frames(path)
  return frames[uniform_frame_indices(len(frames), num_frames)]


def _decode_all_frames(path: str) -> np.ndarray:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  try:
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    width, height = meta["size"]
    frames: List[np.ndarray] = [np.frombuffer(f, np.uint8).reshape(height, width, 3)
                                for f in reader]
  except Exception as e:  # pylint: disable=broad-except  # ffmpeg errors surface as many types
    raise DataError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
  if not frames:
    raise DataError(f"{path}: video has no frames")
  return np.stack(frames)


def write_video(path: str, frames: Sequence[np.ndarray], fps: int = 8) -> None:
  """Writes uint8 ``[T, H, W, 3]`` frames as a lossless-ish H.264/MPEG-4 clip (tests, demos)."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  frames = np.asarray(frames, np.uint8)
  height, width = frames.shape[1:3]
  writer = imageio_ffmpeg.write_frames(path, (width, height), fps=fps, codec="libx264",
                                       output_params=["-crf", "0"], macro_block_size=1)
  writer.send(None)
  for frame in frames:
    writer.send(np.ascontiguousarray(frame))
  writer.close()
