"""Name-by-name import of a foreign parameter file, with one error that lists every mismatch.

An importer (``palix.interop.t5x``, ``palix.interop.big_vision``) describes, for every parameter
of the palix model it builds, which arrays of the source file it comes from and what shape those
must have there: a :class:`Rule`. :func:`apply_rules` then checks the whole file before anything
is converted, so a checkpoint with a missing, extra or mis-shaped array fails once, with a message
naming each source path, the palix path it feeds and both shapes.
"""

import dataclasses
from typing import Callable, Dict, Iterable, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

Shape = Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Source:
  """One array of the source file: its path and the shapes it may have (the first is named in
  errors; more than one for layouts that store the same array joined or split, e.g. T5X's
  ``[embed, heads * head_dim]`` or ``[embed, heads, head_dim]`` attention kernels)."""
  name: str
  shapes: Tuple[Shape, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one palix parameter is made: ``convert(*arrays of sources)`` (numpy in, numpy out)."""
  target: str
  sources: Tuple[Source, ...]
  convert: Callable[..., np.ndarray]


def source(name: str, *shapes: Shape) -> Source:
  return Source(name, tuple(tuple(int(d) for d in s) for s in shapes))


def _shape_text(shapes: Sequence[Shape]) -> str:
  return " or ".join(str(s) for s in shapes)


def apply_rules(arrays: Mapping[str, np.ndarray], rules: Iterable[Rule], *, what: str,
                target_shapes: Mapping[str, Shape], ignored: Iterable[str] = ()
                ) -> Dict[str, np.ndarray]:
  """``{palix path: array}`` from ``arrays`` (``{source path: array}``) by ``rules``.

  Args:
    arrays: the source file's arrays by path.
    rules: one per palix parameter.
    what: the source as errors name it (a file and its format).
    target_shapes: the palix shape of every rule's target (checked after conversion).
    ignored: source paths that are read by no rule on purpose (e.g. a classification head that
      is not imported); they are not reported as extra.

  Raises:
    ValueError: one line listing every missing, mis-shaped and unused source array.
  """
  rules = list(rules)
  problems, used = [], set(ignored)
  for rule in rules:
    for src in rule.sources:
      used.add(src.name)
      if src.name not in arrays:
        problems.append(f"missing {src.name!r} (shape {_shape_text(src.shapes)}, for palix "
                        f"{rule.target})")
      elif tuple(np.shape(arrays[src.name])) not in src.shapes:
        problems.append(f"{src.name!r} has shape {tuple(np.shape(arrays[src.name]))}; palix "
                        f"{rule.target} needs {_shape_text(src.shapes)}")
  extra = [name for name in arrays if name not in used]
  problems += [f"extra {name!r} (shape {tuple(np.shape(arrays[name]))}) has no palix counterpart"
               for name in extra]
  if problems:
    raise ValueError(f"{what} does not fit the palix model: {len(problems)} problem(s): "
                     + "; ".join(problems))
  out = {}
  for rule in rules:
    value = np.asarray(rule.convert(*(np.asarray(arrays[s.name]) for s in rule.sources)))
    if value.shape != tuple(target_shapes[rule.target]):  # an importer bug, not a user error
      raise AssertionError(f"{rule.target}: converted to {value.shape}, the model needs "
                           f"{tuple(target_shapes[rule.target])}")
    out[rule.target] = value
  return out



def abstract_shapes(init_fn, *args) -> Dict[str, Shape]:
  """``{'a/b/kernel': shape}`` of the ``params`` that ``init_fn(rng, *args)`` creates (shapes only,
  nothing is computed; ``args`` may be ``jax.ShapeDtypeStruct``)."""
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0), *args)
  flat = traverse_util.flatten_dict(nn.meta.unbox(abstract["params"]), sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}
