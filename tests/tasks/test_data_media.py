"""Image ops (crop, resize, flip, value range) and reading images and clips from files."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from palix.tasks import image_ops
from palix.tasks import media_io

from tasks_testdata import image_a, moving_square_frames  # pylint: disable=g-bad-import-order


def test_value_range_maps_0_255_to_minus1_1():
  values = tf.constant([0.0, 127.5, 255.0, 300.0, -4.0])
  np.testing.assert_allclose(image_ops.to_unit_range(values).numpy(), [-1, 0, 1, 1, -1])


def test_stretch_resize_keeps_the_layout_of_the_picture():
  out = image_ops.resize(tf.constant(image_a()), 80, "stretch").numpy()  # 40x30 -> 80x80
  assert out.shape == (80, 80, 3)
  # the red square covered x in [10, 30) of 40 and y in [6, 18) of 30: centre (12, 20) -> (32, 40)
  assert np.allclose(out[32, 40], (220, 20, 20), atol=2)
  assert np.allclose(out[2, 4], 0, atol=2)  # the black bar at the left edge


def test_pad_resize_keeps_aspect_ratio_with_black_bands():
  image = np.full((10, 40, 3), 255, np.uint8)  # 4:1 landscape
  out = image_ops.resize(tf.constant(image), 40, "pad").numpy()
  # scaled to 40x10, centred: rows 15..24 white, the rest zero padding
  assert np.allclose(out[15:25], 255, atol=1)
  assert np.all(out[:14] == 0) and np.all(out[26:] == 0)
  with pytest.raises(ValueError, match="resize mode"):
    image_ops.resize(tf.constant(image), 40, "squash")


def test_random_crop_is_seeded_and_in_range():
  image = tf.constant(np.arange(100 * 80 * 3, dtype=np.int32).reshape(100, 80, 3))
  seed = tf.constant([3, 4], tf.int64)
  first = image_ops.random_crop(image, seed, 0.5).numpy()
  again = image_ops.random_crop(image, seed, 0.5).numpy()
  other = image_ops.random_crop(image, tf.constant([3, 5], tf.int64), 0.5).numpy()
  np.testing.assert_array_equal(first, again)
  assert first.shape != other.shape or not np.array_equal(first, other)
  h, w, _ = first.shape
  assert 50 <= h <= 100 and 40 <= w <= 80 and abs(h / w - 100 / 80) < 0.05
  # a crop is a contiguous window of the original
  top, left = divmod(int(first[0, 0, 0]) // 3, 80)
  np.testing.assert_array_equal(first, image.numpy()[top:top + h, left:left + w])


def test_random_flip_is_seeded_and_a_real_flip():
  image = tf.constant(image_a())
  outcomes = set()
  for k in range(12):
    seed = tf.constant([k, 0], tf.int64)
    out = image_ops.random_flip(image, seed).numpy()
    np.testing.assert_array_equal(out, image_ops.random_flip(image, seed).numpy())
    flipped = np.array_equal(out, image_a()[:, ::-1])
    assert flipped or np.array_equal(out, image_a())
    outcomes.add(flipped)
  assert outcomes == {True, False}


def test_read_image_converts_and_names_bad_files(tmp_path):
  grey = tmp_path / "grey.png"
  Image.fromarray(np.full((5, 7), 77, np.uint8)).save(grey)
  out = media_io.read_image(str(grey))
  assert out.shape == (5, 7, 3) and out.dtype == np.uint8 and np.all(out == 77)
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
  with pytest.raises(media_io.DataError, match="broken.png: cannot decode image"):
    media_io.read_image(str(broken))
  with pytest.raises(media_io.DataError, match="nothing.png: image file not found"):
    media_io.read_image(str(tmp_path / "nothing.png"))


def test_uniform_frame_indices():
  np.testing.assert_array_equal(media_io.uniform_frame_indices(10, 5), [1, 3, 5, 7, 9])
  np.testing.assert_array_equal(media_io.uniform_frame_indices(3, 6), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(media_io.uniform_frame_indices(8, 8), np.arange(8))


def _square_left_edge(frame):
  red = (frame[..., 0] > 150) & (frame[..., 1] < 100)
  return int(np.nonzero(red.any(0))[0].min())


def test_video_file_and_frame_folder_sample_uniformly(media_dir):
  clip = media_io.read_video(str(media_dir / "clip.mp4"), 4)
  assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8
  # 8 frames, square's left edge at 1 + 3t; indices (t + 0.5) * 2 -> frames 1, 3, 5, 7
  assert [_square_left_edge(f) for f in clip] == [4, 10, 16, 22]
  folder = media_io.read_video(str(media_dir / "frames"), 5)
  np.testing.assert_array_equal(folder, moving_square_frames(10)[[1, 3, 5, 7, 9]])


def test_bad_videos_name_the_file(tmp_path):
  with pytest.raises(media_io.DataError, match="missing.mp4: video file not found"):
    media_io.read_video(str(tmp_path / "missing.mp4"), 4)
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(b"not a video at all")
  with pytest.raises(media_io.DataError, match="junk.mp4: cannot decode video"):
    media_io.read_video(str(junk), 4)
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(media_io.DataError, match="empty_dir: frame folder has no image files"):
    media_io.read_video(str(tmp_path / "empty_dir"), 4)
