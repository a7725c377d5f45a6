"""Fixtures of the serving tests: the tiny model's Generator (random, seed 0), a server of it,
and a detector."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from palix import generate
from palix.serve import client as client_lib
from palix.serve.scheduler import Batching
from serving_testing import (DETECT_ANSWER, DETECT_PROMPT, MAX_TARGET, SP_MODEL, TEST_LIMITS,
                             random_images, running_server, tiny_model, train_to_answer)


@pytest.fixture(scope="session")
def generator():
  model = tiny_model()
  params = jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0))["params"]
  return generate.Generator(model, nn.meta.unbox(params), SP_MODEL)


@pytest.fixture(scope="session")
def detector(generator):
  """``(generator, image)``: a Generator whose answer to ``DETECT_PROMPT`` about ``image`` is
  ``DETECT_ANSWER`` (checked)."""
  # 8x nearest upscaling: a picture large enough to see the boxes on the page.
  image = np.kron(random_images(1, seed=42)[0], np.ones((8, 8, 1), np.uint8))
  trained = train_to_answer(generator, image, DETECT_PROMPT, DETECT_ANSWER)
  assert trained.generate(image, DETECT_PROMPT, max_decode_len=MAX_TARGET) == DETECT_ANSWER
  return trained, image


@pytest.fixture(scope="session")
def server(generator):
  """A client of the tiny model's server (``TEST_LIMITS``; batches of 1 or 4). ``batch_wait_s``
  lets requests sent together land in one decode even on a loaded machine."""
  with running_server(generator, TEST_LIMITS,
                      Batching(batch_sizes=(1, 4), batch_wait_s=0.3)) as url:
    yield client_lib.Client(url, timeout=120)
