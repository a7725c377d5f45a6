"""TensorFlow settings for the data layer: quiet logs, CPU only (JAX owns any accelerator)."""

import os


def quiet_tensorflow_logs() -> None:
  """Hide TF's C++ info/warning spam; effective only before TensorFlow is first imported. The
  ``palix`` command sets its own level first (``palix.cli.console``; ``--verbose`` keeps them)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


_CONFIGURED = []


def configure_tensorflow() -> None:
  """Keep TensorFlow off GPUs (once per process; later calls are no-ops)."""
  if _CONFIGURED:
    return
  quiet_tensorflow_logs()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # devices already initialised: nothing to hide any more
    pass
  _CONFIGURED.append(True)
