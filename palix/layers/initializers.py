"""Initializers shared by the layers (named so that gin and tests can refer to them)."""

import flax.linen as nn

lecun_normal = nn.initializers.lecun_normal()
xavier_uniform = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
ones = nn.initializers.ones


def normal(stddev):
  return nn.initializers.normal(stddev=stddev)
