"""Logical-axis rules, mesh shapes, parameter/optimizer-state shardings and data layouts.

Multi-device behaviour (8 fake CPU devices, 2 processes) is in
tests/training/test_sharding_and_multihost.py; here an abstract (2, 2, 2) mesh checks the specs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from palix import partitioning


def _partitioner(rules=None, shape=(2, 2, 2)):
  part = partitioning.Partitioner(logical_axis_rules=rules)
  part.mesh = AbstractMesh(shape, partitioning.MESH_AXES)  # specs only; no devices needed
  return part


@pytest.mark.parametrize("names, spec", [
    (("batch", "length", "embed"), P(("data", "fsdp"), None, None)),  # activations: FSDP on batch
    (("batch", "length", "heads", "kv"), P(("data", "fsdp"), None, "model", None)),
    (("embed", "mlp"), P("fsdp", "model")),  # parameters: FSDP on embed
    (("vocab", "embed"), P("model", "fsdp")),
    (("layers", "embed", "heads", "kv"), P(None, "fsdp", "model", None)),
    (("patch", "channels", "embed"), P(None, None, "fsdp")),
    (("relpos_buckets", "heads"), P(None, "model")),
    (("embed", "fused"), P("fsdp", "model")),
    (("expert", "embed", "mlp"), P("data", "fsdp", "model")),  # Soft MoE experts: all three axes
    # Dispatched slots: experts take "data", the groups fall back to "fsdp" (an all-to-all).
    (("batch", None, "expert", "slots", "embed"), P("fsdp", None, "data", None, None)),
])
def test_standard_rules(names, spec):
  assert nn.logical_to_mesh_axes(names, partitioning.standard_logical_axis_rules()) == spec


def test_additional_rules_take_priority():
  rules = partitioning.standard_logical_axis_rules([("embed", "model"), ("vit_embed", "fsdp")])
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("model", None)
  assert nn.logical_to_mesh_axes(("vit_embed", "embed"), rules) == P("fsdp", "model")


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.lecun_normal()
    x = nn.Dense(8, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                 name="even")(x)
    x = nn.Dense(6, kernel_init=nn.with_logical_partitioning(init, ("mlp", "vocab")),
                 name="odd")(x)
    x = nn.Dense(3, kernel_init=nn.with_logical_partitioning(init, ("embed", "novel_name")),
                 name="unknown")(x[..., :6])
    return x


def _boxed_params():
  return jax.eval_shape(_Net().init, jax.random.key(0), jnp.ones((2, 4)))["params"]


def test_param_and_optimizer_state_shardings(caplog):
  part = _partitioner()
  boxed = _boxed_params()
  shardings = part.param_shardings(boxed)
  assert shardings["even"]["kernel"].spec == P("fsdp", "model")
  assert shardings["even"]["bias"].spec == P("model")
  # A mesh axis is used once per array and 'vocab' comes before 'mlp' in the rules.
  assert shardings["odd"]["kernel"].spec == P(None, "model")
  assert shardings["unknown"]["kernel"].spec == P("fsdp", None)
  assert "novel_name" in caplog.text  # logical names without a rule are reported
  params = nn.meta.unbox(boxed)
  state = jax.eval_shape(optax.adafactor(1e-3, min_dim_size_to_factor=4).init, params)
  state_shardings = part.state_shardings(state, params, shardings)
  seen = set()
  for (path, sharding), leaf in zip(jax.tree_util.tree_flatten_with_path(state_shardings)[0],
                                    jax.tree.leaves(state)):
    key, shape = jax.tree_util.keystr(path), leaf.shape
    if key.endswith("['even']['kernel']") and shape in ((4,), (8,)):
      assert sharding.spec == P(), key  # factored row/column statistics: small, replicated
      seen.add("factored")
    elif key.endswith("['unknown']['kernel']") and shape == (6, 3):
      assert sharding.spec == P("fsdp", None), key  # unfactored second moment: like the param
      seen.add("unfactored")
    elif key.endswith("['even']['bias']") and shape == (8,):
      assert sharding.spec == P("model"), key
      seen.add("bias")
    elif shape == ():
      assert sharding.spec == P(), key
  assert seen == {"factored", "unfactored", "bias"}


def test_indivisible_dimensions_are_replicated(caplog):
  part = _partitioner(shape=(1, 3, 1))  # fsdp = 3 does not divide the 4 rows of 'even'
  boxed = _boxed_params()
  shardings = part.param_shardings(boxed)
  assert shardings["even"]["kernel"].spec == P(None, "model")
  assert "dimension 4 is not divisible by mesh axes fsdp (size 3)" in caplog.text


def test_mesh_shape_resolution_and_errors():
  resolve = partitioning._resolve_mesh_shape  # pylint: disable=protected-access
  assert resolve((-1, 1, 1), 8) == (8, 1, 1)
  assert resolve((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 4 devices but 8 are available"):
    resolve((2, 2, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    resolve((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="not divisible by 3"):
    resolve((-1, 3, 1), 8)
  with pytest.raises(ValueError, match="must have 3 entries"):
    resolve((8, 1), 8)


def test_single_process_data_layout_and_batch_sharding():
  part = partitioning.Partitioner()
  layout = part.data_layout(8)
  assert (layout.local_batch_size, layout.shard_index, layout.num_shards) == (8, 0, 1)
  batch = part.shard_batch({"x": np.arange(16).reshape(8, 2)}, layout)
  np.testing.assert_array_equal(batch["x"], np.arange(16).reshape(8, 2))
  assert batch["x"].sharding.spec == P(("data", "fsdp"), None)
  with pytest.raises(ValueError, match=r"batch\['x'\] has shape \(4, 2\); expected 8 rows"):
    part.shard_batch({"x": np.zeros((4, 2))}, layout)
  n = jax.device_count()
  if n > 1:
    with pytest.raises(ValueError, match="not divisible"):
      part.data_layout(n + 1)


class _DenseGeneralHeads(nn.Module):
  """flax DenseGeneral with a 3-D kernel named through with_logical_partitioning (flax#3676)."""

  @nn.compact
  def __call__(self, x):
    return nn.DenseGeneral((2, 4), kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "heads", "kv")))(x)


@pytest.mark.parametrize("constraints", [True, False])
def test_dense_general_kernel_names_under_a_mesh(constraints):
  module, x = _DenseGeneralHeads(), jnp.ones((2, 8))
  params = nn.meta.unbox(module.init(jax.random.key(0), x))
  part = partitioning.Partitioner(activation_constraints=constraints)
  if constraints:
    with pytest.raises(ValueError, match="google/flax#3676"):
      with part.context():
        jax.jit(module.apply)(params, x)
  else:
    with part.context():
      assert jax.jit(module.apply)(params, x).shape == (2, 2, 4)
