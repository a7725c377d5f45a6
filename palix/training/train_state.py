"""The train state (step, params, optimizer state, RNG) and its sharded initialisation.

Everything a run needs to continue exactly is in the state: the data position is ``step`` (batch
``k`` of a deterministic source is the same on every restart) and the step's RNG is
``fold_in(rng, step)``, so a restored run replays the same trajectory.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from palix import partitioning


@flax.struct.dataclass
class TrainState:
  """``step``: completed steps (int32); ``rng``: uint32 key data of the base training key."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  def step_rng(self):
    """The RNG key of the step about to run: ``fold_in(base, step)``."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

  def as_dict(self) -> Dict[str, Any]:
    """The checkpointed form (plain dict; optax state keeps its own node types)."""
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
            "rng": self.rng}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TrainState":
    return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"], rng=d["rng"])


def boxed_variable_shapes(model, rng, input_shapes, input_types):
  """Abstract initial variables, still boxed with their logical axis names."""
  return jax.eval_shape(lambda r: model.get_initial_variables(r, input_shapes, input_types), rng)


def _params_of(variables, where: str):
  if "params" not in variables:
    raise ValueError(f"{where} returned collections {sorted(variables)}; expected 'params'")
  return variables["params"]


class StateFactory:
  """Builds abstract, sharded and initial train states for one model/optimizer/partitioner.

  Args:
    model: a ``palix.models.base.BaseModel``.
    tx: the optax transformation.
    partitioner: a ``palix.partitioning.Partitioner``.
    input_shapes, input_types: global batch geometry for ``model.get_initial_variables``.
    seed: parameters come from ``fold_in(key(seed), 0)``, the training RNG from ``fold_in(.., 1)``.
  """

  def __init__(self, model, tx: optax.GradientTransformation,
               partitioner: partitioning.Partitioner, input_shapes: Mapping[str, Tuple[int, ...]],
               input_types: Optional[Mapping[str, Any]] = None, seed: int = 0):
    self.model, self.tx, self.partitioner = model, tx, partitioner
    self.input_shapes, self.input_types = dict(input_shapes), dict(input_types or {})
    self.seed = seed
    boxed = boxed_variable_shapes(model, self._init_rng(), self.input_shapes, self.input_types)
    boxed_params = _params_of(boxed, f"{type(model).__name__}.get_initial_variables")
    self.param_shardings = partitioner.param_shardings(boxed_params)
    self.abstract_params = nn.meta.unbox(boxed_params)
    abstract = jax.eval_shape(self._init, self._init_rng())
    self.shardings = partitioner.state_shardings(abstract, self.abstract_params,
                                                 self.param_shardings)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.shardings)

  def _init_rng(self):
    return jax.random.fold_in(jax.random.key(self.seed), 0)

  def _init(self, init_rng) -> TrainState:
    variables = nn.meta.unbox(self.model.get_initial_variables(init_rng, self.input_shapes,
                                                                self.input_types))
    params = _params_of(variables, "get_initial_variables")
    train_rng = jax.random.key_data(jax.random.fold_in(jax.random.key(self.seed), 1))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=train_rng)

  def initialize(self) -> TrainState:
    """A fresh state, created directly in its sharded layout.

    ``out_shardings`` places every array; the mesh context is deliberately not entered: flax's
    ``DenseGeneral`` calls a logically partitioned ``kernel_init`` on the flattened 2-D shape,
    and under a mesh the box would constrain that 2-D value with the 3-D kernel's names.
    """
    return jax.jit(self._init, out_shardings=self.shardings)(self._init_rng())

  def init_opt_state(self, params):
    """Optimizer state for ``params`` (after a partial restore replaced some of them)."""
    return jax.jit(self.tx.init, out_shardings=self.shardings.opt_state)(params)
