"""An independent reader of TensorBoard event files (TFRecord framing + CRC32C), for tests."""

import pathlib
import struct
from typing import Dict, List, Tuple

from tensorboard.compat.proto import event_pb2


def _crc32c_table():
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: pathlib.Path) -> List[event_pb2.Event]:
  """All events of one file; raises AssertionError on a bad length or data CRC."""
  data, events, offset = pathlib.Path(path).read_bytes(), [], 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
    assert header_crc == masked(crc32c(header)), f"bad length CRC at byte {offset}"
    payload = data[offset + 12:offset + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
    assert payload_crc == masked(crc32c(payload)), f"bad data CRC at byte {offset}"
    events.append(event_pb2.Event.FromString(payload))
    offset += 16 + length
  return events


def scalars(folder: pathlib.Path) -> Dict[str, List[Tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` over every event file in ``folder``."""
  out: Dict[str, List[Tuple[int, float]]] = {}
  for path in sorted(pathlib.Path(folder).glob("events.out.tfevents.*")):
    for event in read_events(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out
