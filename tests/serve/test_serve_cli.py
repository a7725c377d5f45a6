"""``palix serve`` as a command: it loads a checkpoint, listens on loopback, answers like the
Generator, stops on Ctrl-C, and does all of it where TensorFlow cannot be imported."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import orbax.checkpoint as ocp
import pytest

from palix.serve import client as client_lib

from serving_testing import MODEL_GIN, REPO, random_images

# Runs ``palix`` with TensorFlow, seqio, torch and transformers unimportable (as on a GPU box that
# has only jax): serving must not need them.
WITHOUT_TF = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("tensorflow", "seqio", "torch", "transformers")
    class Refuse(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ImportError(f"blocked import of {name!r}: palix serve must run without it")
    for name in BLOCKED:
      sys.modules[name] = None
    sys.meta_path.insert(0, Refuse())
    from palix.cli import main
    sys.exit(main.main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def checkpoint(generator, tmp_path_factory):
  folder = tmp_path_factory.mktemp("serve_cli")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(folder / "ckpt", {"params": generator.params})
  checkpointer.wait_until_finished()
  (folder / "model.gin").write_text(MODEL_GIN)
  return folder


def _palix(*args, **kwargs):
  return subprocess.Popen([sys.executable, "-c", WITHOUT_TF, *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow  # a second process loads jax, the checkpoint and compiles (~15 s of CPU)
def test_serve_answers_like_the_generator_and_stops_on_ctrl_c(checkpoint, generator):
  process = _palix("serve", f"--gin_file={checkpoint / 'model.gin'}",
                   f"--checkpoint={checkpoint / 'ckpt'}", "--port=0",
                   "--gin.Batching.batch_sizes=(1,)", "--gin.Limits.max_new_tokens=8")
  try:
    line = process.stdout.readline()
    assert line.startswith("palix serve: http://127.0.0.1:"), line + process.stderr.read()
    client = client_lib.Client(line.split()[2], timeout=60)
    assert client.info()["limits"]["max_new_tokens"] == 8
    image = random_images(1, seed=8)[0]
    answer = client.complete({"images": [client_lib.image_data_url(image)],
                              "prompt": "caption en"})
    expected = generator.complete(image, "caption en", max_decode_len=8)
    assert answer["tokens"] == list(expected.tokens) and answer["text"] == expected.text
  finally:
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
  assert process.returncode == 0 and "palix serve: stopped" in stderr, stderr[-3000:]


def test_serve_refuses_a_missing_checkpoint_and_a_busy_port(checkpoint):
  missing = _palix("serve", f"--gin_file={checkpoint / 'model.gin'}",
                   f"--checkpoint={checkpoint / 'nope'}")
  _, stderr = missing.communicate(timeout=120)
  assert missing.returncode == 2 and "--checkpoint" in stderr and "no such folder" in stderr
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    taken = _palix("serve", f"--gin_file={checkpoint / 'model.gin'}",
                   f"--checkpoint={checkpoint / 'ckpt'}", f"--port={port}")
    _, stderr = taken.communicate(timeout=120)
  assert taken.returncode == 1, stderr[-2000:]
  assert f"cannot listen on 127.0.0.1:{port}" in stderr
