"""Parameters named by path (``'vit/Transformer/block00/mlp/wi/kernel'``) and selected by regex.

Freezing, per-group learning rates, weight-decay masks and partial checkpoint restores all select
parameters the same way: ``re.fullmatch`` of a pattern against the ``/``-joined path inside the
``params`` collection. ``'vit/.*'`` is the whole ViT subtree; ``'.*/bias'`` every bias.
"""

import re
from typing import Any, Dict, Iterable, Sequence, Tuple

import jax


def key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path) -> str:
  """A ``jax.tree_util`` key path as ``'a/b/c'``."""
  return "/".join(key_name(k) for k in path)


def flatten(tree) -> Dict[str, Any]:
  """``{'a/b/c': leaf}`` in tree order."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def map_with_path_str(fn, tree, *rest):
  """``tree_map`` whose function receives the path string first."""
  return jax.tree_util.tree_map_with_path(lambda p, *x: fn(path_str(p), *x), tree, *rest)


def compile_patterns(patterns: Iterable[str], what: str) -> Tuple[re.Pattern, ...]:
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f"{what}: invalid regular expression {pattern!r}: {e}") from e
  return tuple(compiled)


def matches_any(path: str, patterns: Sequence[re.Pattern]) -> bool:
  return any(p.fullmatch(path) for p in patterns)


def check_all_match(paths: Iterable[str], patterns: Sequence[re.Pattern], what: str) -> None:
  """A pattern that selects nothing is almost always a typo: say so instead of ignoring it."""
  paths = list(paths)
  for pattern in patterns:
    if not any(pattern.fullmatch(p) for p in paths):
      examples = ", ".join(paths[:5])
      raise ValueError(f"{what}: pattern {pattern.pattern!r} matches no parameter (patterns are "
                       f"matched in full against paths like {examples})")
