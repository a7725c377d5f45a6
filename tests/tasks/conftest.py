"""Shared fixtures of the data-layer tests: quiet TF, the committed vocabulary, fixture media."""

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

# pylint: disable-next=g-bad-import-order
from tasks_testdata import FIXTURES, image_a, image_b, moving_square_frames


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
  """Fixture annotation files (committed) next to images and clips written here."""
  from palix.tasks import media_io  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("media")
  for name in os.listdir(FIXTURES):
    shutil.copy(os.path.join(FIXTURES, name), folder / name)
  Image.fromarray(image_a()).save(folder / "img_a.png")
  Image.fromarray(image_b()).save(folder / "img_b.jpg", quality=95)
  Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(folder / "img_c.png")
  Image.fromarray(image_a()).save(folder / "COCO_val2014_000000000001.jpg", quality=95)
  Image.fromarray(image_b()).save(folder / "COCO_val2014_000000000002.jpg", quality=95)
  media_io.write_video(str(folder / "clip.mp4"), moving_square_frames(8))
  (folder / "frames").mkdir()
  for t, frame in enumerate(moving_square_frames(10)):
    Image.fromarray(frame).save(folder / "frames" / f"frame_{t:03d}.png")
  return folder


@pytest.fixture(scope="session")
def vocab():
  from palix.tasks import vocabulary  # pylint: disable=g-import-not-at-top
  return vocabulary.get_vocabulary()
