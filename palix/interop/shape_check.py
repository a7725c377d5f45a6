"""The imported parameter tree against the one the palix module initialises (shapes only)."""

from typing import Any, Dict

import flax.linen as nn
import numpy as np
from flax import traverse_util


def _shapes(tree) -> Dict[str, tuple]:
  return {"/".join(k): tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(tree).items()}


def check_fits(params: dict, abstract_params: Any, what: str, needs: str = "the config needs"
               ) -> None:
  """Raises one ``ValueError`` naming every missing, extra or wrongly shaped key of ``params``
  against ``abstract_params`` (``jax.eval_shape`` of the module's ``init``, boxed or not).

  Args:
    what: the weights' name in the message, e.g. ``"HF T5"``.
    needs: how a mismatch names the expected shape's origin.
  """
  want, got = _shapes(nn.meta.unbox(abstract_params)), _shapes(params)
  model = what.split()[-1]
  problems = [f"{k}: missing" for k in sorted(set(want) - set(got))]
  problems += [f"{k}: not a {model} parameter" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: HF gives {got[k]}, {needs} {want[k]}"
               for k in sorted(set(want) & set(got)) if got[k] != want[k]]
  if problems:
    raise ValueError(f"{what} weights do not fit the config: " + "; ".join(problems))
