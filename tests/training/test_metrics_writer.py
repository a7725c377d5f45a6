"""TensorBoard events and the JSON-lines log, read back independently (no TensorFlow)."""

import json
import subprocess
import sys

import pytest

import tb_events
from palix.training.metrics_writer import MetricsWriter


def test_crc32c_reference_vector():
  # RFC 3720 (iSCSI) B.4: CRC32C of 32 zero bytes.
  assert tb_events.crc32c(bytes(32)) == 0x8A9136AA


def test_scalars_round_trip_and_resume_truncation(tmp_path):
  writer = MetricsWriter(str(tmp_path / "train"), str(tmp_path / "metrics.jsonl"))
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": 1.0 / step, "learning_rate": 0.5})
  writer.write_scalars(4, {"loss": float("nan")})
  writer.close()
  events = tb_events.scalars(tmp_path / "train")
  assert events["learning_rate"] == [(1, 0.5), (2, 0.5), (3, 0.5)]
  assert [s for s, _ in events["loss"]] == [1, 2, 3, 4]
  assert [v for _, v in events["loss"]][:3] == pytest.approx([1.0, 0.5, 1 / 3])
  first = tb_events.read_events(next((tmp_path / "train").iterdir()))[0]
  assert first.file_version == "brain.Event:2"
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[1] == {"step": 2, "loss": 0.5, "learning_rate": 0.5}
  assert lines[3] == {"step": 4, "loss": "nan"}
  resumed = MetricsWriter(str(tmp_path / "train"), str(tmp_path / "metrics.jsonl"))
  resumed.truncate_after(2)
  resumed.close()
  assert [json.loads(line)["step"] for line in
          (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = MetricsWriter(str(tmp_path / "train"), str(tmp_path / "m.jsonl"), enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  assert not list(tmp_path.iterdir())


def test_training_package_imports_without_tensorflow():
  code = ("import sys; import palix.training.trainer, palix.training.infer, palix.cli.train, "
          "palix.cli.infer, palix.training.metrics_writer as m, tempfile; "
          "w = m.MetricsWriter(tempfile.mkdtemp()); w.write_scalars(1, {'a': 1.0}); w.close(); "
          "bad = [n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'seqio')]; "
          "print(bad); sys.exit(1 if bad else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
