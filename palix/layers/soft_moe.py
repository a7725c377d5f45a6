"""Soft MoE (Puigcerver et al., "From Sparse to Soft Mixtures of Experts"): an MLP replacement.

Every routing group (one image by default) of ``m`` tokens ``x`` feeds ``E`` experts with ``P``
slots each. With ``x^`` and ``mu^`` L2-normalised over the width (``mu``: one learned vector per
slot) and a learned scalar ``scale``, ``logits[t, s] = scale * <x^_t, mu^_s>``;

* dispatch ``D = softmax(logits)`` over the tokens: slot ``s`` reads ``sum_t D[t, s] x_t``;
* each expert is an MLP of the dense width and processes its ``P`` slots;
* combine ``C = softmax(logits)`` over all ``E * P`` slots: token ``t`` gets
  ``sum_s C[t, s] y_s``.

Normalising both sides keeps the softmaxes from collapsing to one-hot as the width grows (the
paper's section 2.3); the scale lets the model sharpen them again. Optional Gaussian noise on the
logits (``noise_std``) is drawn from the ``dropout`` RNG stream during training.

Routing groups. By default every segment of a row (``segment_ids`` 1, 2, ...: one image each,
also when NaViT-style packing puts several images in a row) is its own group with its own
``E * P`` slots; padding (segment 0) is never dispatched and gets a zero output. Rows hold at
most ``SoftMoeConfig.max_images_per_row`` segments. ``SoftMoeConfig.group_size = g`` instead
cuts the flattened batch into contiguous groups of ``g`` tokens (several images per group when
``g`` is a multiple of the image length); padding is still excluded.

Sharding. Expert parameters and the slot tensors carry the logical axis ``expert``; the rules in
``palix.partitioning`` map it onto a mesh axis (expert parallelism), the layer never names one.

Diagnostics (dispatch and combine weight ranges, token-slot cosine similarity, the scale) are
sown into the ``MOE_METRICS`` collection when it is mutable; ``collect_metrics`` turns them into
the scalars a model's ``loss_fn`` returns, which the trainer writes to TensorBoard.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import unfreeze

from palix.layers import initializers as inits
from palix.layers.mlp import gelu_exact

MOE_METRICS = "moe_metrics"  # flax collection the layers sow their diagnostics into
# Metrics also reported per MoE layer (the collapse indicators of the paper's Figure 13).
PER_LAYER_METRICS = ("dispatch_max", "combine_max")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SoftMoeConfig:
  """Soft MoE options of a ViT (``ViTConfig.moe = @SoftMoeConfig()``).

  Attributes:
    num_experts: experts per MoE layer.
    slots_per_expert: slots each expert processes per routing group; None derives it from
      ``capacity_factor``.
    capacity_factor: with ``slots_per_expert=None``, the total slots per group are
      ``round(capacity_factor * tokens per group)``, split over the experts (at least one each).
    last_n_layers: the MoE replaces the MLP of the last ``n`` blocks (the paper: half the depth).
    group_size: None routes each image (segment) separately; ``g`` routes contiguous groups of
      ``g`` tokens of the flattened batch.
    max_images_per_row: packed rows hold images with segment ids ``1..max_images_per_row``;
      each has its own slots. Tokens of higher ids are not routed (``moe/unrouted_tokens``).
    noise_std: std of Gaussian noise added to the routing logits in training.
  """
  num_experts: Optional[int] = None
  slots_per_expert: Optional[int] = None
  capacity_factor: float = 1.0
  last_n_layers: int = 1
  group_size: Optional[int] = None
  max_images_per_row: int = 1
  noise_std: float = 0.0

  def validate(self, depth: int, tokens_per_image: Optional[int] = None) -> None:
    """Raises ``ValueError`` naming the gin binding of the first bad option."""

    def bad(name, message):
      raise ValueError(f"SoftMoeConfig.{name} = {getattr(self, name)!r}: {message}")

    if self.num_experts is None:
      bad("num_experts", "must be set (e.g. SoftMoeConfig.num_experts = 8)")
    for name in ("num_experts", "max_images_per_row"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
        bad(name, "must be a positive integer")
    if self.slots_per_expert is not None and (not isinstance(self.slots_per_expert, int)
                                              or self.slots_per_expert <= 0):
      bad("slots_per_expert", "must be a positive integer, or None to derive it from "
          "SoftMoeConfig.capacity_factor")
    if not self.capacity_factor > 0:
      bad("capacity_factor", "must be positive")
    if not self.noise_std >= 0:
      bad("noise_std", "must be >= 0")
    if not isinstance(self.last_n_layers, int) or not 1 <= self.last_n_layers <= depth:
      bad("last_n_layers", f"the MoE layers must lie within the ViT's {depth} blocks "
          f"(1 <= last_n_layers <= {depth})")
    if self.group_size is not None:
      if not isinstance(self.group_size, int) or self.group_size <= 0:
        bad("group_size", "must be a positive integer, or None for one group per image")
      if tokens_per_image and tokens_per_image % self.group_size and (
          self.group_size % tokens_per_image):
        bad("group_size", f"does not divide the {tokens_per_image} tokens of an image and is "
            "not a multiple of them")

  def num_slots(self, tokens_per_group: int) -> int:
    """Slots per expert for routing groups of ``tokens_per_group`` tokens."""
    if self.slots_per_expert is not None:
      return self.slots_per_expert
    return max(1, int(round(self.capacity_factor * tokens_per_group / self.num_experts)))


def l2_normalize(x, axis=-1, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True) + eps)


def routing_weights(logits, membership):
  """Dispatch and combine weights.

  Args:
    logits: ``[G, m, E, P]`` token-slot logits of ``G`` groups of ``m`` tokens.
    membership: bool ``[G, m, S]``: token ``t`` belongs to sub-group ``s`` (its own set of
      slots); a token in no sub-group (padding) is neither dispatched nor combined.

  Returns:
    ``(dispatch, combine)``, both ``[G, m, S, E, P]``: dispatch sums to 1 over the member tokens of
    each non-empty sub-group (and is 0 elsewhere); combine sums to 1 over the ``E * P`` slots of a
    token's sub-group (and is 0 for non-members).
  """
  member = membership[..., None, None]
  masked = jnp.where(member, logits[:, :, None], jnp.finfo(logits.dtype).min)
  # An empty sub-group gives a uniform softmax over masked logits; the mask then zeroes it.
  dispatch = jax.nn.softmax(masked, axis=1) * member
  combine = jax.nn.softmax(logits, axis=(2, 3))[:, :, None] * member
  return dispatch, combine


def routing_diagnostics(dispatch, combine, membership, cosine, scale) -> Dict[str, jax.Array]:
  """Scalar summaries of one layer's routing (real tokens and non-empty slots only)."""
  dispatch, combine, cosine, scale = jax.lax.stop_gradient((dispatch, combine, cosine, scale))
  f32 = lambda a: a.astype(jnp.float32)
  member = membership[..., None, None]
  present = jnp.any(membership, axis=1)[:, :, None, None]  # [G, S, 1, 1]: sub-group has tokens
  slots_per_group = dispatch.shape[-2] * dispatch.shape[-1]
  num_slots = jnp.maximum(jnp.sum(present) * slots_per_group, 1)
  slot_mean = lambda v: jnp.sum(jnp.where(present, v, 0)) / num_slots
  real = jnp.any(membership, axis=2)  # [G, m]
  num_real = jnp.maximum(jnp.sum(real), 1)
  token_mean = lambda v: jnp.sum(jnp.where(real, v, 0)) / num_real
  token_combine = jnp.sum(combine, axis=2)  # [G, m, E, P]: each token's weights over its slots
  cos = jnp.where(member, f32(cosine)[:, :, None], -jnp.inf)
  return {
      "dispatch_max": slot_mean(jnp.max(f32(dispatch), axis=1)),
      "dispatch_min": slot_mean(jnp.min(jnp.where(member, f32(dispatch), 1.0), axis=1)),
      "combine_max": token_mean(jnp.max(f32(token_combine), axis=(2, 3))),
      "combine_min": token_mean(jnp.min(f32(token_combine), axis=(2, 3))),
      "similarity_mean": token_mean(jnp.mean(f32(cosine), axis=(2, 3))),
      "similarity_max": slot_mean(jnp.max(cos, axis=1)),
      "scale": f32(scale),
  }


class ExpertDense(nn.Module):
  """``E`` independent Dense layers: ``[..., E, P, in] -> [..., E, P, out]``, kernel ``[E, in, out]``."""
  features: int
  kernel_axes: tuple
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  # Per-expert fans: batch_axis keeps the expert axis out of fan-in/fan-out, so every expert is
  # initialised exactly like the dense MLP's kernel.
  kernel_init: Callable = nn.initializers.xavier_uniform(batch_axis=(0,))

  @nn.compact
  def __call__(self, x):
    num_experts, features_in = x.shape[-3], x.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (num_experts, features_in, self.features), self.param_dtype)
    y = jnp.einsum("...epi,eio->...epo", x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          inits.zeros, (self.kernel_axes[0], self.kernel_axes[2])),
                        (num_experts, self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)[:, None, :]
    return y


class SoftMoe(nn.Module):
  """Soft MoE over tokens ``[B, L, D]`` with ``segment_ids [B, L]`` (0 = padding); see the module
  docstring. Experts are MLPs ``Dense(mlp_dim) -> activation -> Dense(D)`` like ``Mlp``."""
  config: SoftMoeConfig
  mlp_dim: int
  activation: Callable = gelu_exact
  use_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  # One unit vector per slot after normalisation; fan-in over the width only.
  mu_init: Callable = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))

  @nn.compact
  def __call__(self, x, segment_ids=None, deterministic=True):
    c = self.config
    batch, length, width = x.shape
    if segment_ids is None:
      segment_ids = jnp.ones((batch, length), jnp.int32)
    tokens, membership, sub_groups = self._groups(x, segment_ids)
    experts = c.num_experts
    slots = c.num_slots(tokens.shape[1] // sub_groups)

    mu = self.param("mu", nn.with_logical_partitioning(self.mu_init, ("embed", "expert", "slots")),
                    (width, experts, slots), self.param_dtype)
    scale = self.param("scale", nn.with_logical_partitioning(inits.ones, ()), (), self.param_dtype)
    # Routing in float32: softmaxes over hundreds of tokens or slots are precision-sensitive.
    cosine = jnp.einsum("gmd,dep->gmep", l2_normalize(tokens.astype(jnp.float32)),
                        l2_normalize(mu.astype(jnp.float32), axis=0))
    logits = scale.astype(jnp.float32) * cosine
    if not deterministic and c.noise_std > 0:
      logits = logits + c.noise_std * jax.random.normal(self.make_rng("dropout"), logits.shape)
    dispatch, combine = routing_weights(logits, membership)
    # Routing weights stay laid out like the tokens (by group); only the slot tensors below are
    # laid out by expert, so the layout changes once each way (an all-to-all under a mesh).
    weight_axes = ("batch", "length", None, None, None)
    dispatch = nn.with_logical_constraint(dispatch, weight_axes)
    combine = nn.with_logical_constraint(combine, weight_axes)
    if not self.is_initializing():  # init would otherwise store them next to the parameters
      self.sow("intermediates", "dispatch", dispatch)
      self.sow("intermediates", "combine", combine)

    slot_axes = ("batch", None, "expert", "slots", "embed")
    slot_in = jnp.einsum("gmsep,gmd->gsepd", dispatch.astype(self.dtype), tokens.astype(self.dtype))
    slot_in = nn.with_logical_constraint(slot_in, slot_axes)
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    h = ExpertDense(self.mlp_dim, ("expert", "embed", "mlp"), name="wi", **kw)(slot_in)
    h = nn.with_logical_constraint(self.activation(h), slot_axes[:-1] + ("mlp",))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    slot_out = ExpertDense(width, ("expert", "mlp", "embed"), name="wo", **kw)(h)
    slot_out = nn.with_logical_constraint(slot_out, slot_axes)
    y = jnp.einsum("gmsep,gsepd->gmd", combine.astype(self.dtype), slot_out)
    y = nn.with_logical_constraint(y.reshape(batch, length, width), ("batch", "length", "embed"))

    if self.is_mutable_collection(MOE_METRICS) and not self.is_initializing():
      metrics = routing_diagnostics(dispatch, combine, membership, cosine, scale)
      real = jnp.sum(segment_ids > 0)
      metrics["unrouted_tokens"] = (real - jnp.sum(membership)) / jnp.maximum(real, 1)
      for name, value in metrics.items():
        self.sow(MOE_METRICS, name, value)
    return y

  def _groups(self, x, segment_ids):
    """``(tokens [G, m, D], membership [G, m, S], S)`` for the configured routing groups."""
    c = self.config
    batch, length, width = x.shape
    if c.group_size is None:
      ids = jnp.arange(1, c.max_images_per_row + 1)
      return x, segment_ids[..., None] == ids, c.max_images_per_row
    g = c.group_size
    if (batch * length) % g:
      raise ValueError(f"SoftMoeConfig.group_size = {g} does not divide the {batch * length} "
                       f"tokens of the batch ({batch} rows of {length})")
    valid = (segment_ids > 0).reshape(batch * length // g, g, 1)
    return x.reshape(batch * length // g, g, width), valid, 1


def collect_metrics(state: Mapping[str, Any]) -> Dict[str, jax.Array]:
  """Scalars from the ``MOE_METRICS`` collection of ``module.apply(..., mutable=[MOE_METRICS])``.

  ``moe/<name>`` is the mean over all MoE layers; ``moe/<name>/layer<k>`` (for
  ``PER_LAYER_METRICS``) is the k-th MoE layer in parameter order (scanned stacks count each layer).
  Empty for models without Soft MoE.
  """
  sown = state.get(MOE_METRICS) if state else None
  if not sown:
    return {}
  per_name: Dict[str, list] = {}
  for path, values in traverse_util.flatten_dict(unfreeze(sown)).items():
    # A sown value is a tuple with one entry per call; scanned layers stack along axis 0.
    values = values if isinstance(values, (tuple, list)) else (values,)
    per_name.setdefault(path[-1], []).extend(jnp.reshape(v, (-1,)) for v in values)
  out = {}
  for name, parts in sorted(per_name.items()):
    layers = jnp.concatenate(parts)
    out[f"moe/{name}"] = jnp.mean(layers)
    if name in PER_LAYER_METRICS:
      for k in range(layers.shape[0]):
        out[f"moe/{name}/layer{k}"] = layers[k]
  return out

