import pytest

from decoding_toy_lm import make_toy


@pytest.fixture(scope="session")
def toy():
  return make_toy()
