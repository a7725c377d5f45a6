"""Device mesh ``(data, fsdp, model)`` and logical-axis rules: how parameters, optimizer state and
batches are laid out over devices, with JAX's own engine (``jax.jit`` + ``NamedSharding``).

Layers name their axes (``batch``, ``embed``, ``mlp``, ...; see ``palix.layers``) and never see the
mesh. The rules here map those names to mesh axes; they are data, bound by gin::

  Partitioner.mesh_shape = (-1, 2, 1)        # data inferred, 2-way FSDP, no model parallelism
  standard_logical_axis_rules.additional_rules = [('vit_embed', 'fsdp')]

Rules are tried in order for every array and a mesh axis is used at most once per array (flax's
semantics), so for activations ``batch`` takes ``fsdp`` first and ``embed`` stays unsharded, while
for parameters ``embed`` is sharded over ``fsdp`` (ZeRO-3/FSDP style). A parameter dimension that
the mesh axis does not divide is replicated instead of failing (logged once per parameter).
"""

import contextlib
import dataclasses
import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "model")
LogicalRules = Sequence[Tuple[str, Any]]

# Every logical name used by palix layers appears here, so a new name is easy to spot.
_STANDARD_RULES = (
    # Soft MoE experts over the data axis (expert parallelism, as in V-MoE). First, so that in the
    # dispatched slot tensors [groups, ..., expert, ...] the experts take "data" and the groups
    # fall back to "fsdp" (the second "batch" rule): dispatch and combine become all-to-alls.
    ("expert", "data"),
    ("batch", ("data", "fsdp")),
    ("batch", "fsdp"),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("fused", "model"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("patch", None),
    ("channels", None),
    ("relpos_buckets", None),
    ("vit_embed", "fsdp"),  # the ViT width where the PaLI-X projection reads it
    ("images", None),  # the per-image (frame) embedding table
    ("slots", None),  # Soft MoE slots per expert
)


@gin.configurable
def standard_logical_axis_rules(additional_rules: LogicalRules = ()) -> Tuple[Tuple[str, Any], ...]:
  """The default rules; ``additional_rules`` come first, so they take priority."""
  return tuple(tuple(r) for r in additional_rules) + _STANDARD_RULES


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Which rows of the global batch this process feeds (t5x's DataLayout)."""
  global_batch_size: int
  local_batch_size: int
  shard_index: int
  num_shards: int


def _path_str(path) -> str:
  return "/".join(str(_key_name(k)) for k in path)


@gin.configurable
class Partitioner:
  """Mesh + rules. ``mesh_shape`` is ``(data, fsdp, model)``; one entry may be -1 (inferred).

  Args:
    mesh_shape: sizes of the ``(data, fsdp, model)`` axes.
    logical_axis_rules: ``(logical_name, mesh_axis_or_axes_or_None)`` pairs; default
      ``standard_logical_axis_rules()``.
    devices: devices to use (default: all ``jax.devices()``, every process's).
    activation_constraints: trace models under the mesh so their ``nn.with_logical_constraint``
      calls pin activation layouts. With False they are no-ops and XLA propagates layouts from
      the (still sharded) parameters and batch.
  """

  def __init__(self, mesh_shape: Sequence[int] = (-1, 1, 1),
               logical_axis_rules: Optional[LogicalRules] = None, devices=None,
               activation_constraints: bool = True):
    self.activation_constraints = activation_constraints
    devices = list(jax.devices() if devices is None else devices)
    self.mesh = jax.make_mesh(_resolve_mesh_shape(mesh_shape, len(devices)), MESH_AXES,
                              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                              devices=devices)
    rules = standard_logical_axis_rules() if logical_axis_rules is None else logical_axis_rules
    self.rules = tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in rules)
    self._warned = set()

  # --- contexts and simple shardings -------------------------------------------------------------
  @contextlib.contextmanager
  def context(self):
    """Mesh and rules for tracing: ``nn.with_logical_constraint`` inside the model needs both."""
    if not self.activation_constraints:
      with nn.logical_axis_rules(self.rules):
        yield
      return
    try:
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        yield
    except ValueError as e:
      if "is only valid for values of rank" not in str(e):
        raise
      raise ValueError(
          f"{e}\n\npalix.partitioning: a layer's logical axis names do not match the rank of "
          "the value they constrain. A known cause is flax's DenseGeneral with a multi-axis "
          "kernel_init wrapped in nn.with_logical_partitioning (google/flax#3676): it boxes the "
          "flattened 2-D kernel, and under a mesh the 3-D names fail. Fix the layer (declare the "
          "kernel with self.param at its full shape), or set "
          "Partitioner.activation_constraints = False.") from e

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_axes(self):
    """Mesh axes the ``batch`` logical axis maps to (e.g. ``('data', 'fsdp')``)."""
    return nn.logical_to_mesh_axes(("batch",), self.rules)[0]

  def batch_sharding(self, ndim: int = 1) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(self.batch_axes, *([None] * (ndim - 1))))

  # --- parameters and optimizer state ---------------------------------------------------------
  def param_shardings(self, boxed_tree) -> Any:
    """NamedShardings for an (abstract) variable tree boxed with logical names (``Partitioned``).

    Unboxed leaves are replicated; dimensions the assigned mesh axes do not divide are replicated.
    """
    specs = nn.get_partition_spec(boxed_tree)
    abstract = nn.meta.unbox(boxed_tree)
    self._warn_unknown_names(specs)

    def to_sharding(path, spec, leaf):
      mesh_spec = nn.logical_to_mesh_axes(tuple(spec), self.rules) if spec else PartitionSpec()
      return NamedSharding(self.mesh, self._divisible(_path_str(path), mesh_spec, leaf.shape))

    return jax.tree_util.tree_map_with_path(
        to_sharding, specs, abstract, is_leaf=lambda x: isinstance(x, PartitionSpec))

  def state_shardings(self, abstract_tree, abstract_params, param_shardings) -> Any:
    """Shardings for a tree holding parameters and optimizer state (e.g. the train state).

    A leaf whose key path ends with a parameter's path and has that parameter's shape (the
    parameter itself, Adam moments, unfactored Adafactor statistics) gets the parameter's sharding;
    everything else (counts, Adafactor's factored row/column statistics, RNG, step) is small and
    replicated.
    """
    by_path = {}
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    for (path, leaf), sharding in zip(flat_params, jax.tree.leaves(param_shardings)):
      by_path[tuple(_key_name(k) for k in path)] = (tuple(leaf.shape), sharding)

    def choose(path, leaf):
      tail = _trailing_dict_keys(path)
      for start in range(len(tail)):
        hit = by_path.get(tail[start:])
        if hit is not None:
          return hit[1] if tuple(leaf.shape) == hit[0] else self.replicated
      return self.replicated

    return jax.tree_util.tree_map_with_path(choose, abstract_tree)

  # --- batches ---------------------------------------------------------------------------------
  def data_layout(self, global_batch_size: int) -> DataLayout:
    """The contiguous rows of the global batch whose data this process must load."""
    num_batch_shards = math.prod(self.mesh.shape[a] for a in _as_tuple(self.batch_axes))
    if global_batch_size % num_batch_shards:
      raise ValueError(f"batch size {global_batch_size} is not divisible by the {num_batch_shards} "
                       f"batch shards of mesh {dict(self.mesh.shape)} (batch -> {self.batch_axes})")
    index_map = self.batch_sharding(1).devices_indices_map((global_batch_size,))
    rows = sorted({(idx[0].start or 0, idx[0].stop or global_batch_size)
                   for dev, idx in index_map.items() if dev.process_index == jax.process_index()})
    start, stop = rows[0][0], rows[-1][1]
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
      raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {rows}; "
                       "order the mesh devices so each process's devices are adjacent on the "
                       "batch axes")
    local = stop - start
    return DataLayout(global_batch_size, local, start // local, global_batch_size // local)

  def shard_batch(self, local_batch: Mapping[str, np.ndarray],
                  layout: DataLayout) -> Dict[str, jax.Array]:
    """Process-local numpy rows -> global arrays sharded over the batch axes."""
    out = {}
    for key, value in local_batch.items():
      value = np.asarray(value)
      if value.shape[:1] != (layout.local_batch_size,):
        raise ValueError(f"batch[{key!r}] has shape {value.shape}; expected "
                         f"{layout.local_batch_size} rows (global batch {layout.global_batch_size} "
                         f"over {layout.num_shards} data shards)")
      global_shape = (layout.global_batch_size,) + value.shape[1:]
      out[key] = jax.make_array_from_process_local_data(self.batch_sharding(value.ndim), value,
                                                        global_shape)
    return out

  # --- helpers ------------------------------------------------------------------------------------
  def _divisible(self, name: str, spec: PartitionSpec, shape) -> PartitionSpec:
    fixed = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
      size = math.prod(self.mesh.shape[a] for a in _as_tuple(axes))
      if axes is not None and dim % size:
        if name not in self._warned:
          logger.warning("%s has shape %s; dimension %d is not divisible by mesh "
                          "axes %s (size %d), so it is replicated", name, tuple(shape), dim, axes,
                          size)
          self._warned.add(name)
        axes = None
      fixed.append(axes)
    return PartitionSpec(*fixed)

  def _warn_unknown_names(self, specs) -> None:
    known = {name for name, _ in self.rules}
    used = {n for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
            for n in s if isinstance(n, str)}
    unknown = sorted(used - known - self._warned)
    if unknown:
      logger.warning("logical axis names %s have no rule and are replicated",
                      unknown)
      self._warned.update(unknown)


def _resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> Tuple[int, ...]:
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh_shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh_shape {shape}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh_shape {shape}: {num_devices} devices are not divisible by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh_shape {shape} {MESH_AXES} needs {math.prod(shape)} devices but "
                     f"{num_devices} are available; use -1 for one axis to infer it")
  return shape


def _as_tuple(axes) -> Tuple[str, ...]:
  if axes is None:
    return ()
  return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def _key_name(key) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def _trailing_dict_keys(path) -> Tuple[str, ...]:
  names = []
  for key in reversed(path):
    if not isinstance(key, jax.tree_util.DictKey):
      break
    names.append(key.key)
  return tuple(reversed(names))

