"""docs/serving.md's shell and Python snippets run as written against a server (the docs' address
replaced by the test server's), and say what the server answers."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from serving_testing import REPO, random_images

DOC = os.path.join(REPO, "docs", "serving.md")
DOC_URL = "http://127.0.0.1:8000/"


def _blocks(language):
  return re.findall(rf"```{language}\n(.*?)```", open(DOC, encoding="utf-8").read(), flags=re.S)


@pytest.fixture(scope="module")
def url(server):
  return f"http://{server.host}:{server.port}/"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_shell_commands(url, generator, tmp_path):
  commands = next(b for b in _blocks("bash") if "curl" in b).replace(DOC_URL, url).splitlines()
  image = random_images(1, seed=21)[0]
  Image.fromarray(image).save(tmp_path / "query.png")
  outputs = []
  for command in commands:  # one command a line; curl prints no newline after a JSON answer
    result = subprocess.run(["bash", "-e", "-c", command], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, (command, result.stderr)
    outputs.append(result.stdout)
  expected = generator.complete(image, "caption en", max_decode_len=8)
  _, complete, stream, info = outputs
  assert json.loads(complete)["tokens"] == list(expected.tokens)
  assert json.loads(complete)["text"] == expected.text
  events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", stream)
  assert [e for e, _ in events] == ["token"] * len(expected.tokens) + ["done"]
  assert json.loads(events[-1][1])["text"] == expected.text
  assert json.loads(info)["limits"]["max_new_tokens"] == generator.model.max_target_len


def test_the_python_client_snippet(url, generator):
  snippet = next(b for b in _blocks("py") if "Client(" in b).replace(DOC_URL, url)
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    exec(compile(snippet, DOC, "exec"), {})  # pylint: disable=exec-used
  answer, *tokens, done = output.getvalue().splitlines()
  expected = generator.complete(np.zeros((64, 64, 3), np.uint8), "caption en")
  assert answer == expected.text and done == f"done {expected.text}"
  assert len(tokens) == len(expected.tokens)
  assert "".join(line[len("token "):] for line in tokens) == expected.text  # the deltas
