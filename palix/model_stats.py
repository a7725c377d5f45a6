"""Parameter counts and forward FLOPs, computed abstractly (nothing is allocated).

FLOPs count the matmuls and convolutions of the traced forward pass, 2 per multiply-add (the
convention of the ViT-22B and PaLM papers); elementwise ops, norms and softmax are not counted.
The jaxpr is walked recursively and a ``scan`` body counts once per iteration, so scanned and
unrolled models report the same number.
"""

import math
from typing import Any, Callable, Dict

import flax.linen as nn
import jax
import numpy as np
from jax.extend import core as jcore


def param_shapes(module: nn.Module, example_inputs: Dict[str, Any], rng=None):
  """Abstract parameter tree of ``module.init(rng, **example_inputs)`` via ``jax.eval_shape``."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  variables = jax.eval_shape(lambda r, x: module.init(r, **x), rng, example_inputs)
  return nn.meta.unbox(variables["params"])


def count_params(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def params_by_top_level_module(params) -> Dict[str, int]:
  return {name: count_params(sub) for name, sub in params.items()}


def _subjaxprs(eqn):
  for value in eqn.params.values():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, jcore.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jcore.Jaxpr):
        yield v


def _eqn_flops(eqn) -> int:
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contract = math.prod(lhs_shape[d] for d in lhs_contract)
    return 2 * contract * math.prod(eqn.outvars[0].aval.shape)
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    out_features = rhs[dn.rhs_spec[0]]
    per_output = math.prod(rhs) // out_features
    return 2 * per_output * math.prod(eqn.outvars[0].aval.shape)
  return 0


def jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    subs = list(_subjaxprs(eqn))
    if not subs:
      continue
    if eqn.primitive.name == "cond":
      total += max(jaxpr_flops(s) for s in subs)
    elif eqn.primitive.name == "scan":
      total += eqn.params["length"] * sum(jaxpr_flops(s) for s in subs)
    else:
      total += sum(jaxpr_flops(s) for s in subs)
  return total


def forward_flops(fn: Callable, *abstract_args) -> int:
  """Matmul/conv FLOPs of ``fn(*abstract_args)`` (abstract args: ``jax.ShapeDtypeStruct`` trees)."""
  closed = jax.make_jaxpr(fn)(*abstract_args)
  return jaxpr_flops(closed.jaxpr)


def abstract(tree):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)
