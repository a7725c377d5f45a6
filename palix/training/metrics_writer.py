"""Scalars to TensorBoard event files and to a JSON-lines log, without TensorFlow.

clu's metric writers import TensorFlow, so events are written with TensorBoard's pure-python record
writer and protos (``tensorboard.summary.writer.record_writer``). Layout under ``MODEL_DIR``::

  train/events.out.tfevents.<time>.<host>.<pid>.palix   # open with: tensorboard --logdir MODEL_DIR
  metrics.jsonl                                          # {"step": 100, "loss": 2.3, ...} per line

Only the first process writes (``enabled``); the others get a writer that does nothing. Without the
``tensorboard`` package (a bare accelerator image) only the JSON-lines log is written.
"""

import json
import math
import os
import pathlib
import socket
import time
import logging
from typing import Mapping, Optional

logger = logging.getLogger(__name__)


class MetricsWriter:
  """``write_scalars(step, {name: value})`` to TensorBoard (``logdir``) and ``jsonl_path``."""

  def __init__(self, logdir: str, jsonl_path: Optional[str] = None, *, enabled: bool = True):
    self.enabled = enabled
    self._events = None
    self._jsonl_path = pathlib.Path(jsonl_path) if jsonl_path else None
    if not enabled:
      return
    try:  # pylint: disable=g-import-not-at-top
      from tensorboard.compat.proto import event_pb2, summary_pb2
      from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
      logger.warning("tensorboard is not installed: metrics go to %s only", jsonl_path)
      return
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
            ".palix")
    self.event_file = pathlib.Path(logdir) / name
    self._events = RecordWriter(open(self.event_file, "wb"))  # pylint: disable=consider-using-with
    self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def truncate_after(self, step: int) -> None:
    """Drop JSON log lines past ``step`` (a resumed run rewrites them)."""
    if not self.enabled or not self._jsonl_path or not self._jsonl_path.exists():
      return
    kept = [line for line in self._jsonl_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    self._jsonl_path.write_text("".join(line + "\n" for line in kept))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    if self._events is not None:
      summary = self._summary_pb2.Summary(value=[
          self._summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
      self._write_event(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                              summary=summary))
      self._events.flush()
    if self._jsonl_path:
      record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v))
                                      for k, v in values.items()}}
      with open(self._jsonl_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def close(self) -> None:
    if self._events is not None and not self._events.closed:
      self._events.close()

  def _write_event(self, event) -> None:
    self._events.write(event.SerializeToString())
