"""Starting, waiting for and cleaning up test subprocesses (JAX on fake CPU devices)."""

import os
import pathlib
import socket
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]
TESTS_TRAINING = pathlib.Path(__file__).resolve().parent


# XLA:CPU spends most of a tiny model's test time in LLVM; these halve compile time. Runs that are
# compared with each other always use the same flags.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def env(num_devices: int = 1, compilation_cache: Optional[str] = None, **extra) -> Dict[str, str]:
  """Environment for a JAX subprocess: CPU only, ``num_devices`` fake devices, fast compilation,
  the test model on the path, and optionally a persistent compilation cache shared by the
  subprocesses of a session.
  """
  out = dict(os.environ)
  out.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices} {FAST_COMPILE_FLAGS}",
      "PYTHONPATH": os.pathsep.join([str(TESTS_TRAINING), str(REPO)]
                                    + [p for p in [os.environ.get("PYTHONPATH")] if p]),
      "TF_CPP_MIN_LOG_LEVEL": "2",
  })
  if compilation_cache:
    out.update({"JAX_COMPILATION_CACHE_DIR": compilation_cache,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  out.update(extra)
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(args: Sequence[str], log: pathlib.Path, environment: Dict[str, str]) -> subprocess.Popen:
  handle = open(log, "w")  # pylint: disable=consider-using-with
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=environment, stdout=handle,
                          stderr=subprocess.STDOUT)


def wait_all(processes: List[subprocess.Popen], timeout: float) -> List[int]:
  """Waits for every process; on timeout (or any exception) kills all of them and re-raises."""
  try:
    return [p.wait(timeout=timeout) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()


def tail(log: pathlib.Path, chars: int = 6000) -> str:
  return log.read_text()[-chars:] if log.exists() else "(no log)"
