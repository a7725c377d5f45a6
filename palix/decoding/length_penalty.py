"""Length penalties for beam search: ``score = sum(logprobs) / penalty(length, alpha)``.

``length`` counts the emitted tokens including EOS. Both penalties are increasing in ``length`` for
``alpha > 0`` (longer hypotheses are favoured), constant for ``alpha = 0`` and decreasing for
``alpha < 0``; beam search relies on that monotonicity for its exact stopping bound.
"""


def gnmt_length_penalty(length, alpha):
  """``((5 + length) / 6) ** alpha``: GNMT (Wu et al. 2016), t5x's ``brevity_penalty``."""
  return ((5.0 + length) / 6.0) ** alpha


def power_length_penalty(length, alpha):
  """``length ** alpha``: the Hugging Face ``generate`` / fairseq convention."""
  return (1.0 * length) ** alpha
