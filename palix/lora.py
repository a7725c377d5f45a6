"""LoRA (Hu et al. 2021): low-rank adapters on Dense kernels, as a transform of the parameter tree.

A kernel ``W`` whose path matches one of ``LoraConfig.targets`` gets two adapter arrays, ``A``
``[*in, r]`` (random) and ``B`` ``[r, *out]`` (zeros, so training starts from the base model), and
the model computes with ``W + (alpha / r) * A @ B``. No layer knows about LoRA: the adapters are a
separate tree (``{<kernel path>: {'lora_a': A, 'lora_b': B}}``, nested like the parameters), and
``merge`` folds them into the kernels when the model is applied. This keeps every model (PaLI-X,
CapPa, the classifier, a bare T5 or ViT) and both layer stacks (unrolled or scanned) adaptable
without editing a layer, and a merged tree is an ordinary parameter tree for inference. The cost
of the transform is that each adapted kernel is materialised as ``W + s A B`` in the forward pass
and its full-size gradient in the backward pass (the low-rank factors get theirs from it), where
an adapter inside the layer would compute ``x A B`` instead; the base weights need no gradient
buffers beyond those kernels and no optimizer state.

Which axes of a kernel are its input: palix kernels are laid out ``[*in, *out]``; the logical axis
names say where the split is. Leading ``layers`` (scanned stacks) and ``expert`` (Soft MoE) axes
are batch axes (one adapter per layer or expert); an attention output projection starts with
``heads, kv`` (two input axes); every other Dense kernel has one input axis. The adapters carry
the kernel's logical names on the axes they share with it (the rank axis has none, so it is never
sharded), so they are partitioned like their kernels.
"""

import dataclasses
import math
import re
from typing import Any, Dict, Mapping, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from flax import traverse_util

BATCH_AXES = ("layers", "expert")
ADAPTER_A, ADAPTER_B = "lora_a", "lora_b"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Attributes:
    targets: regexes matched in full against kernel paths (``'text/.*/attention/(query|value)/
      kernel'``); every match must be a Dense kernel, and every regex must match something.
    rank: ``r``, the inner width of ``A @ B``.
    alpha: the update is scaled by ``alpha / rank`` (the paper's convention: changing the rank
      does not change the initial learning dynamics much).
  """
  targets: Sequence[str] = (".*/(query|value)/kernel",)
  rank: int = 4
  alpha: float = 8.0

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"LoraConfig.rank must be a positive integer; got {self.rank!r}")
    if isinstance(self.targets, str):
      raise ValueError(f"LoraConfig.targets must be a list of regexes; got the string "
                       f"{self.targets!r}")

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank


def _split(names: Tuple[Any, ...], path: str) -> Tuple[int, int]:
  """``(batch axes, input axes)`` of a kernel from its logical axis names."""
  batch = 0
  while batch < len(names) and names[batch] in BATCH_AXES:
    batch += 1
  rest = names[batch:]
  if len(rest) < 2 or any(n is None for n in rest):
    raise ValueError(f"LoRA target {path!r} (logical axes {names}) is not a Dense kernel "
                     "[*in, *out] with named axes (convolution kernels and unnamed axes are not "
                     "adapted)")
  num_in = 2 if rest[0] == "heads" else 1
  return batch, num_in


KernelInfo = Tuple[Tuple[int, ...], Any, Tuple[Any, ...]]  # shape, dtype, logical axis names


def select_kernels(boxed_params, config: LoraConfig) -> Dict[str, KernelInfo]:
  """``{path: (shape, dtype, logical names)}`` of the kernels ``config.targets`` select.

  ``boxed_params`` is a parameter tree boxed with logical names (``get_initial_variables``
  output, possibly abstract).
  """
  patterns = []
  for target in config.targets:
    try:
      patterns.append(re.compile(target))
    except re.error as e:
      raise ValueError(f"LoraConfig.targets: invalid regex {target!r}: {e}") from None
  specs = nn.get_partition_spec(boxed_params)
  flat_specs = traverse_util.flatten_dict(specs, sep="/",
                                          is_leaf=lambda _, v: not isinstance(v, Mapping))
  flat = traverse_util.flatten_dict(nn.meta.unbox(boxed_params), sep="/")
  unmatched = [p.pattern for p in patterns if not any(p.fullmatch(path) for path in flat)]
  if unmatched:
    kernels = [p for p in flat if p.endswith("kernel")][:4]
    raise ValueError(f"LoraConfig.targets {unmatched} match no parameter (matched in full "
                     f"against paths like {kernels})")
  selected = {}
  for path, leaf in flat.items():
    if any(p.fullmatch(path) for p in patterns):
      names = tuple(flat_specs[path]) if flat_specs.get(path) else ()
      if len(names) != len(leaf.shape):
        raise ValueError(f"LoRA target {path!r} (shape {tuple(leaf.shape)}) has no logical axis "
                         "names; only kernels declared with names can be adapted")
      selected[path] = (tuple(leaf.shape), leaf.dtype, names)
  return selected


def adapter_shapes(shape, names, rank: int, path: str = "kernel"):
  """``((A shape, A names), (B shape, B names))`` of a kernel's adapters."""
  batch, num_in = _split(tuple(names), path)
  lead, inner, outer = shape[:batch], shape[batch:batch + num_in], shape[batch + num_in:]
  lead_names, in_names, out_names = (names[:batch], names[batch:batch + num_in],
                                     names[batch + num_in:])
  return ((tuple(lead) + tuple(inner) + (rank,), tuple(lead_names) + tuple(in_names) + (None,)),
          (tuple(lead) + (rank,) + tuple(outer), tuple(lead_names) + (None,) + tuple(out_names)))


def init_adapters(rng, boxed_params, config: LoraConfig):
  """Adapters for the selected kernels, boxed with logical names: ``A ~ N(0, 1/fan_in)``,
  ``B = 0``, in the kernel's dtype."""
  adapters = {}
  selected = select_kernels(boxed_params, config)
  for index, (path, (shape, dtype, names)) in enumerate(sorted(selected.items())):
    batch, num_in = _split(names, path)
    (a_shape, a_names), (b_shape, b_names) = adapter_shapes(shape, names, config.rank, path)
    fan_in = math.prod(shape[batch:batch + num_in])
    a = jax.random.normal(jax.random.fold_in(rng, index), a_shape, jnp.float32)
    adapters[f"{path}/{ADAPTER_A}"] = nn.Partitioned((a / math.sqrt(fan_in)).astype(dtype),
                                                     names=a_names)
    adapters[f"{path}/{ADAPTER_B}"] = nn.Partitioned(jnp.zeros(b_shape, dtype), names=b_names)
  return traverse_util.unflatten_dict(adapters, sep="/")


def low_rank_delta(a, b, kernel_ndim: int):
  """``A @ B`` reshaped to the kernel: ``A [*batch, *in, r]``, ``B [*batch, r, *out]``."""
  batch = a.ndim + b.ndim - kernel_ndim - 2
  lead, rank = a.shape[:batch], a.shape[-1]
  inner, outer = a.shape[batch:-1], b.shape[batch + 1:]
  product = jnp.matmul(a.reshape(lead + (-1, rank)), b.reshape(lead + (rank, -1)),
                       precision=jax.lax.Precision.HIGHEST)
  return product.reshape(lead + inner + outer)


def adapted_paths(adapters) -> Tuple[str, ...]:
  """The kernel paths an adapter tree adapts."""
  flat = traverse_util.flatten_dict(adapters, sep="/")
  return tuple(sorted({p.rsplit("/", 1)[0] for p in flat}))


def merge(params, adapters, scale: float):
  """``params`` with every adapted kernel replaced by ``W + scale * A @ B`` (in ``W``'s dtype;
  the sum is taken in float32). Works on numpy or jax arrays, inside or outside ``jit``."""
  flat = traverse_util.flatten_dict(params, sep="/")
  flat_adapters = traverse_util.flatten_dict(adapters, sep="/")
  out = dict(flat)
  for path in adapted_paths(adapters):
    if path not in flat:
      raise ValueError(f"LoRA adapter for {path!r}, which is not a parameter of the base model")
    kernel = flat[path]
    a, b = flat_adapters[f"{path}/{ADAPTER_A}"], flat_adapters[f"{path}/{ADAPTER_B}"]
    delta = low_rank_delta(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                           jnp.ndim(kernel))
    if delta.shape != jnp.shape(kernel):
      raise ValueError(f"LoRA adapter of {path!r} gives a {delta.shape} update for a "
                       f"{jnp.shape(kernel)} kernel")
    out[path] = (jnp.asarray(kernel, jnp.float32) + scale * delta).astype(jnp.asarray(kernel).dtype)
  return traverse_util.unflatten_dict(out, sep="/")

