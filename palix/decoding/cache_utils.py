"""Batch-axis operations on decode caches: checking, repeating for beams, gathering beams.

A decode cache is any pytree whose every leaf has the batch as axis 0. Beam search lays beams out
example-major: row ``b * beam_size + k`` holds beam ``k`` of example ``b``.
"""

from typing import Any

import jax
import jax.numpy as jnp

Array = Any


def _leaf_name(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def check_batch_axis(cache, batch_size: int, what: str = "cache"):
  """Raises a ValueError naming the first leaf whose axis 0 is not ``batch_size``."""
  leaves = jax.tree_util.tree_flatten_with_path(cache)[0]
  for path, leaf in leaves:
    shape = jnp.shape(leaf)
    if not shape or shape[0] != batch_size:
      raise ValueError(
          f"{what} leaf {_leaf_name(path)} has shape {tuple(shape)}; every leaf must have the "
          f"batch ({batch_size}) as axis 0")


def check_same_structure(before, after, what: str = "tokens_to_logits"):
  """Raises a ValueError if the new cache differs from the old one in structure, shape or dtype.

  ``lax.while_loop`` needs an unchanged carry; this names the offending leaf instead of the loop's
  generic type error.
  """
  before_leaves, before_def = jax.tree_util.tree_flatten_with_path(before)
  after_leaves, after_def = jax.tree_util.tree_flatten_with_path(after)
  if before_def != after_def:
    raise ValueError(f"{what} returned a cache with a different structure:\n  in:  {before_def}"
                     f"\n  out: {after_def}")
  for (path, x), (_, y) in zip(before_leaves, after_leaves):
    if jnp.shape(x) != jnp.shape(y) or jnp.result_type(x) != jnp.result_type(y):
      raise ValueError(
          f"{what} changed cache leaf {_leaf_name(path)} from {jnp.result_type(x)}"
          f"{list(jnp.shape(x))} to {jnp.result_type(y)}{list(jnp.shape(y))}")


def repeat_batch(tree, times: int):
  """Repeats each leaf on axis 0: ``[B, ...] -> [B * times, ...]``, example-major."""
  return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0), tree)


def gather_beams(tree, beam_indices: Array, beam_size: int):
  """Selects beams of a flat ``[B * beam_size, ...]`` pytree (the layout of the decode cache).

  ``out[b * K + k] = in[b * beam_size + beam_indices[b, k]]`` for ``beam_indices`` of shape
  ``[B, K]``; the result is flat ``[B * K, ...]``.
  """
  batch_size = beam_indices.shape[0]
  flat_index = (jnp.arange(batch_size)[:, None] * beam_size + beam_indices).reshape(-1)
  return jax.tree.map(lambda x: jnp.take(x, flat_index, axis=0), tree)


def gather_along_beams(array: Array, beam_indices: Array) -> Array:
  """``out[b, k, ...] = array[b, beam_indices[b, k], ...]`` for an unflattened ``[B, K_in, ...]``.
  """
  index = beam_indices.reshape(beam_indices.shape + (1,) * (array.ndim - 2))
  return jnp.take_along_axis(array, index, axis=1)
