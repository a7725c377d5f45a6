"""Make a ``tokens_to_logits`` callable a pytree, so ``jax.jit`` traces the arrays it closes over.

The decoders take the model step as a plain Python callable, usually
``functools.partial(module.apply, {'params': params}, method=...)`` or a closure over ``params``.
Passing such a callable to ``jax.jit`` as a static argument would bake the parameters into the
compiled program as constants (slow to compile, huge executables, and a recompile for every new
closure object). Instead :func:`as_traced_callable` splits it into

* its array leaves (``jax.Array``, ``numpy`` arrays and scalars, tracers): jit arguments, traced;
* everything else (the function, Python scalars such as ``deterministic=True``, modules): static,
  hashed into the jit cache key. Unhashable static values are keyed by identity.

Handled shapes: ``functools.partial`` (and ``jax.tree_util.Partial``) and Python functions with a
closure; both are inspected recursively (a partial of a closure, a closure over a partial). Any
other callable (a bound method of an object holding arrays, a class instance) is kept whole as a
static value: correct, but its arrays become compile-time constants.
"""

import functools
import types
from typing import Any, Callable

import jax
import numpy as np

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


class _ById:
  """Hashable stand-in for an unhashable static value: equal only to the same object."""
  __slots__ = ("value",)

  def __init__(self, value):
    self.value = value

  def __hash__(self):
    return id(self.value)

  def __eq__(self, other):
    return isinstance(other, _ById) and other.value is self.value


def _static(value):
  try:
    hash(value)
    return value
  except TypeError:
    return _ById(value)


def _unwrap(value):
  return value.value if isinstance(value, _ById) else value


class _FunctionHead:
  """A closure's code, globals and defaults: two closures of one ``def`` share this key."""
  __slots__ = ("fn", "key")

  def __init__(self, fn):
    self.fn = fn
    kwdefaults = tuple(sorted((fn.__kwdefaults__ or {}).items()))
    self.key = (fn.__code__, id(fn.__globals__), _static(fn.__defaults__), _static(kwdefaults))

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, _FunctionHead) and other.key == self.key

  def rebuild(self, cell_values):
    fn = self.fn
    cells = tuple(types.CellType() if v is _EMPTY_CELL else types.CellType(v)
                  for v in cell_values)
    new = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


class _EmptyCell:
  def __repr__(self):
    return "<empty cell>"


_EMPTY_CELL = _EmptyCell()


def _cell_value(cell):
  try:
    return cell.cell_contents
  except ValueError:  # a cell whose variable is not assigned yet
    return _EMPTY_CELL


def _convert_leaf(leaf, in_progress):
  if id(leaf) in in_progress:  # a recursive closure refers to itself: keep that reference static
    return leaf
  if isinstance(leaf, functools.partial) or (
      isinstance(leaf, types.FunctionType) and leaf.__closure__):
    return _convert(leaf, in_progress)
  return leaf


@jax.tree_util.register_pytree_node_class
class TracedCallable:
  """A callable whose array leaves are pytree children (see the module docstring)."""

  def __init__(self, kind: str, head: Any, parts: Any):
    self.kind = kind      # "partial", "closure" or "opaque"
    self.head = head      # None for a partial, a _FunctionHead, or the opaque callable
    self.parts = parts    # (func, args, keywords) for a partial, the cell values for a closure

  def __call__(self, *args, **kwargs):
    if self.kind == "partial":
      func, bound_args, bound_kwargs = self.parts
      return func(*bound_args, *args, **{**bound_kwargs, **kwargs})
    if self.kind == "closure":
      return self.head.rebuild(self.parts)(*args, **kwargs)
    return _unwrap(self.head)(*args, **kwargs)

  def tree_flatten(self):
    leaves, treedef = jax.tree_util.tree_flatten(self.parts)
    is_array = tuple(isinstance(x, _ARRAY_TYPES) for x in leaves)
    children = [x for x, a in zip(leaves, is_array) if a]
    statics = tuple(None if a else _static(x) for x, a in zip(leaves, is_array))
    return children, (self.kind, self.head, treedef, is_array, statics)

  @classmethod
  def tree_unflatten(cls, aux, children):
    kind, head, treedef, is_array, statics = aux
    it = iter(children)
    leaves = [next(it) if a else _unwrap(s) for a, s in zip(is_array, statics)]
    return cls(kind, head, jax.tree_util.tree_unflatten(treedef, leaves))


def as_traced_callable(fn: Callable) -> TracedCallable:
  """Wraps ``fn`` so that jit traces its array leaves instead of baking them in as constants."""
  if isinstance(fn, TracedCallable):
    return fn
  if not callable(fn):
    raise TypeError(f"tokens_to_logits must be callable, got {type(fn).__name__}")
  return _convert(fn, frozenset())


def _convert(fn, in_progress):
  in_progress = in_progress | {id(fn)}
  convert = functools.partial(_convert_leaf, in_progress=in_progress)
  if isinstance(fn, functools.partial):
    parts = (fn.func, tuple(fn.args), dict(fn.keywords))
    return TracedCallable("partial", None, jax.tree.map(convert, parts))
  if isinstance(fn, types.FunctionType) and fn.__closure__:
    cells = tuple(_cell_value(c) for c in fn.__closure__)
    return TracedCallable("closure", _FunctionHead(fn), jax.tree.map(convert, cells))
  return TracedCallable("opaque", _static(fn), ())
