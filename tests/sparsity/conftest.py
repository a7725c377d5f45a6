"""The trainer's tiny model and subprocess helpers live in tests/training."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
