"""ViT-22B-style vision encoder family (Ti ... 22B), one module shared by PaLI-X, CapPa and later models.

Variants of the shared layers are chosen by gin through ``ViTConfig``:

* block: ``SequentialBlock`` (classic pre-LN) or ``ParallelBlock`` (ViT-22B: one norm, fused
  QKV+MLP-in projection, fused output projection);
* QK-norm, biases on QKV and on the norms (ViT-22B drops both, keeps the MLP biases);
* patch embedding: ``ConvPatchEmbed`` or ``DualPatchNormEmbed``;
* position embedding: ``LearnedPosEmb`` (1-D, resized), ``SinCos2DPosEmb``, NaViT's factorized
  ``FactorizedPosEmb`` (learned) and ``SinCosFactorizedPosEmb`` (fixed), absolute or fractional;
* pooling: ``NoPool`` (all tokens, as PaLI-X uses it), ``GlobalAveragePool``, ``MAPHead``;
* ``scan`` over layers and ``remat``; parameter and compute dtypes;
* Soft MoE (``moe = SoftMoeConfig(...)``): the MLP of the last ``n`` blocks becomes a Soft MoE
  (``palix.layers.soft_moe``), in either block; scanned models scan the dense and the MoE blocks
  as two stacks (``blocks`` and ``moe_blocks``);
* AdaTape (``adatape = AdaTapeConfig(...)``, ``palix.layers.adatape``): tape tokens read from a
  tape bank are appended before block ``tape_layer``; a scanned stack the tape falls inside is
  split there (its second part is ``<stack>_after_tape``). ``out`` adds ``tape_tokens_used``,
  ``ponder_cost`` and ``tape_segment_ids`` (tape slots an example does not use are padding).

``ViT.__call__`` returns ``(output, out)``: the pooled output (or all tokens) and a dict of named
intermediates (``stem``, ``with_posemb``, ``block00``..., ``encoded``, ``pre_logits``).

``ViT.encode_packed`` is the second entry, for NaViT's packed sequences (``palix.tasks.packing``):
patchified pixels of several images per row with their image ids and patch coordinates, the
same blocks, attention only within an image and one pooled vector per image slot.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from palix.layers import initializers as inits
from palix.layers.adatape import AdaTape, AdaTapeConfig
from palix.layers.attention import MultiHeadAttention, dot_product_attention
from palix.layers.masks import segment_mask
from palix.layers.mlp import Mlp, gelu_exact, gelu_tanh
from palix.layers.norms import LayerNorm
from palix.layers.patch import ConvPatchEmbed, DualPatchNormEmbed
from palix.layers.pooling import GlobalAveragePool, MAPHead, NoPool
from palix.layers.position import (FactorizedPosEmb, LearnedPosEmb, SinCos2DPosEmb,
                                   SinCosFactorizedPosEmb)
from palix.layers.soft_moe import MOE_METRICS, SoftMoe, SoftMoeConfig

# name: (width, depth, mlp_dim, num_heads). Table 2 of Zhai et al. 2021 plus ViT-22B (papers.md §1).
VARIANTS = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
    "22B": (6144, 48, 24576, 48),
}


def decode_variant(variant: str) -> dict:
  """``"B/16"`` -> ``{width, depth, mlp_dim, num_heads, patch_size}``; the patch part is optional."""
  name, _, patch = variant.partition("/")
  if name not in VARIANTS:
    raise ValueError(f"unknown ViT scale {name!r} (from variant {variant!r}); "
                     f"expected one of {', '.join(VARIANTS)}, optionally with '/<patch>' (e.g. 'B/16')")
  width, depth, mlp_dim, num_heads = VARIANTS[name]
  out = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  if patch:
    if not patch.isdigit() or int(patch) < 1:
      raise ValueError(f"ViT variant {variant!r}: patch size {patch!r} is not a positive integer")
    out["patch_size"] = int(patch)
  return out


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Everything that shapes a ViT. Sizes come from ``variant`` unless given explicitly."""
  variant: Optional[str] = None
  width: Optional[int] = None
  depth: Optional[int] = None
  mlp_dim: Optional[int] = None
  num_heads: Optional[int] = None
  patch_size: Optional[int] = None
  image_size: int = 224  # resolution the learned position table is stored for
  block: Any = None  # SequentialBlock or ParallelBlock (None: SequentialBlock)
  patch_embed: Any = None  # ConvPatchEmbed or DualPatchNormEmbed (None: ConvPatchEmbed)
  posemb: Any = None  # LearnedPosEmb, SinCos2DPosEmb, FactorizedPosEmb, SinCosFactorizedPosEmb
  #                     (None: LearnedPosEmb)
  pool: Any = None  # NoPool, GlobalAveragePool or MAPHead (None: NoPool)
  mlp: Any = None  # MLP class for the sequential block (None: Mlp)
  # GELU of every MLP (blocks, Soft MoE experts, MAP head): vit.gelu_exact (erf, HF ViT) or
  # vit.gelu_tanh (flax's default: big_vision ViTs, SigLIP)
  mlp_activation: Callable = gelu_exact
  moe: Optional[SoftMoeConfig] = None  # Soft MoE in the last blocks (None: all dense)
  adatape: Optional[AdaTapeConfig] = None  # AdaTape tape tokens (None: a fixed-length sequence)
  class_token: bool = False
  qk_norm: bool = False
  qkv_bias: bool = True
  norm_bias: bool = True
  mlp_bias: bool = True
  layer_norm_eps: float = 1e-6
  posemb_max_grid: int = 64
  posemb_fractional: bool = False  # factorized embeddings: fractional instead of absolute indices
  dropout_rate: float = 0.0
  scan: bool = False
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: Optional[str] = None

  def resolved(self) -> "ViTConfig":
    """Fill sizes from ``variant`` and default layer classes; check that the result is complete."""
    sizes = decode_variant(self.variant) if self.variant else {}
    updates = {k: v for k, v in sizes.items() if getattr(self, k) is None}
    defaults = dict(block=SequentialBlock, patch_embed=ConvPatchEmbed, posemb=LearnedPosEmb,
                    pool=NoPool, mlp=Mlp)
    updates.update({k: v for k, v in defaults.items() if getattr(self, k) is None})
    cfg = dataclasses.replace(self, **updates)
    missing = [k for k in ("width", "depth", "mlp_dim", "num_heads", "patch_size")
               if getattr(cfg, k) is None]
    if missing:
      raise ValueError(f"ViTConfig is missing {', '.join(missing)}: set ViTConfig.variant "
                       "(e.g. 'B/16') or the sizes explicitly")
    if cfg.width % cfg.num_heads:
      raise ValueError(f"ViTConfig: width {cfg.width} is not divisible by num_heads {cfg.num_heads}")
    if cfg.image_size % cfg.patch_size:
      raise ValueError(f"ViTConfig: image_size {cfg.image_size} is not divisible by patch_size "
                       f"{cfg.patch_size}; the learned position table needs a whole patch grid")
    if not hasattr(jax.checkpoint_policies, cfg.remat_policy):
      raise ValueError(f"ViTConfig.remat_policy {cfg.remat_policy!r} is not a "
                       "jax.checkpoint_policies name")
    if cfg.moe is not None:
      tokens = (cfg.image_size // cfg.patch_size) ** 2 + int(cfg.class_token)
      cfg.moe.validate(depth=cfg.depth, tokens_per_image=tokens)
    if cfg.adatape is not None:
      cfg = dataclasses.replace(cfg, adatape=cfg.adatape.for_vit(cfg))
    return cfg

  @property
  def num_dense_layers(self) -> int:
    """Blocks before the Soft MoE blocks (all of them without ``moe``)."""
    return self.depth - (self.moe.last_n_layers if self.moe is not None else 0)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)


def _make_soft_moe(c: ViTConfig, kw) -> SoftMoe:
  return SoftMoe(c.moe, c.mlp_dim, activation=c.mlp_activation, use_bias=c.mlp_bias,
                 dropout_rate=c.dropout_rate, name="moe", **kw)


class SequentialBlock(nn.Module):
  """Classic pre-LN block: ``x += Attn(LN(x)); x += MLP(LN(x))`` (Soft MoE for the MLP with
  ``use_moe``; it routes by ``segment_ids``)."""
  config: ViTConfig
  use_moe: bool = False

  @nn.compact
  def __call__(self, x, mask, deterministic=True, segment_ids=None):
    c = self.config
    kw = dict(dtype=c.compute_dtype, param_dtype=c.params_dtype)
    y = LayerNorm(use_bias=c.norm_bias, epsilon=c.layer_norm_eps, name="norm1", **kw)(x)
    y = MultiHeadAttention(num_heads=c.num_heads, qkv_bias=c.qkv_bias, out_bias=c.qkv_bias,
                           qk_norm=c.qk_norm, norm_bias=c.norm_bias,
                           implementation=c.attention_impl, name="attention", **kw)(y, mask=mask)
    x = x + nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    y = LayerNorm(use_bias=c.norm_bias, epsilon=c.layer_norm_eps, name="norm2", **kw)(x)
    if self.use_moe:
      y = _make_soft_moe(c, kw)(y, segment_ids, deterministic)
    else:
      y = c.mlp(c.mlp_dim, activation=c.mlp_activation, use_bias=c.mlp_bias,
                dropout_rate=c.dropout_rate, name="mlp", **kw)(y, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class ParallelBlock(nn.Module):
  """ViT-22B block: ``y = LN(x); x += W_out [Attn(y); gelu(y W_mlp_in + b)] + b_out``.

  One matmul computes Q, K, V and the MLP input (``fused_in``), one computes both outputs
  (``fused_out``). Q/K/V have no bias; the MLP keeps its biases (``mlp_bias``). With ``use_moe``
  the MLP branch is a Soft MoE of ``LN(x)``: ``x += W_out Attn(y) + b_out + MoE(y)``.
  """
  config: ViTConfig
  use_moe: bool = False

  @nn.compact
  def __call__(self, x, mask, deterministic=True, segment_ids=None):
    c = self.config
    kw = dict(dtype=c.compute_dtype, param_dtype=c.params_dtype)
    h, hd, d = c.num_heads, c.head_dim, c.width
    m = 0 if self.use_moe else c.mlp_dim  # the fused MLP branch's width
    y = LayerNorm(use_bias=c.norm_bias, epsilon=c.layer_norm_eps, name="norm", **kw)(x)
    fused = nn.Dense(3 * h * hd + m, use_bias=False,
                     kernel_init=nn.with_logical_partitioning(inits.lecun_normal, ("embed", "fused")),
                     name="fused_in", **kw)(y)
    q, k, v, u = jnp.split(fused, [h * hd, 2 * h * hd, 3 * h * hd], axis=-1)
    if c.qkv_bias:
      qkv_b = self.param("qkv_bias", nn.with_logical_partitioning(inits.zeros, ("fused",)),
                         (3 * h * hd,), c.params_dtype).astype(c.compute_dtype)
      q, k, v = q + qkv_b[:h * hd], k + qkv_b[h * hd:2 * h * hd], v + qkv_b[2 * h * hd:]
    if c.mlp_bias and m:
      u = u + self.param("mlp_in_bias", nn.with_logical_partitioning(inits.zeros, ("mlp",)),
                         (m,), c.params_dtype).astype(c.compute_dtype)
    shape = x.shape[:-1] + (h, hd)
    q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
    if c.qk_norm:
      q = LayerNorm(use_bias=c.norm_bias, epsilon=c.layer_norm_eps, axis_name="kv",
                    name="query_norm", **kw)(q)
      k = LayerNorm(use_bias=c.norm_bias, epsilon=c.layer_norm_eps, axis_name="kv",
                    name="key_norm", **kw)(k)
    a = dot_product_attention(q, k, v, mask=mask, implementation=c.attention_impl)
    a = a.reshape(x.shape[:-1] + (h * hd,))
    fused_out = nn.Dense(d, use_bias=c.mlp_bias,
                         kernel_init=nn.with_logical_partitioning(inits.lecun_normal,
                                                                  ("fused", "embed")),
                         bias_init=nn.with_logical_partitioning(inits.zeros, ("embed",)),
                         name="fused_out", **kw)
    if self.use_moe:
      y = fused_out(a) + _make_soft_moe(c, kw)(y, segment_ids, deterministic)
    else:
      u = nn.with_logical_constraint(c.mlp_activation(u), ("batch", "length", "mlp"))
      y = fused_out(jnp.concatenate([a, u], axis=-1))
    x = x + nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _ScanStep(nn.Module):
  """Adapts a block to ``nn.scan``'s ``(carry, x) -> (carry, y)`` form."""
  config: ViTConfig
  use_moe: bool = False

  @nn.compact
  def __call__(self, x, mask, deterministic, segment_ids):
    block = self.config.block(config=self.config, use_moe=self.use_moe, name="block")
    x = block(x, mask, deterministic, segment_ids)
    return x, x


def _stacks(dense: int, depth: int, tape_layer: Optional[int]):
  """``(first, length, use_moe, name)`` of the scanned stacks: the dense blocks, then the Soft MoE
  blocks; a tape inside a stack splits it (the part after the tape is ``<name>_after_tape``)."""
  stacks = []
  for first, stop, use_moe, name in ((0, dense, False, "blocks"),
                                     (dense, depth, True, "moe_blocks")):
    if tape_layer is not None and first < tape_layer < stop:
      stacks += [(first, tape_layer - first, use_moe, name),
                 (tape_layer, stop - tape_layer, use_moe, f"{name}_after_tape")]
    elif stop > first:
      stacks.append((first, stop - first, use_moe, name))
  return stacks


class Encoder(nn.Module):
  """The stack of blocks plus the final norm, over tokens ``[B, L, D]`` with ``segment_ids [B, L]``.

  ``segment_ids`` (0 = padding) give the attention mask, so packed and padded sequences work
  without changes here; Soft MoE blocks route by them too. ``tape`` (AdaTape:
  ``(x, segment_ids) -> (x, segment_ids, read)``, ``palix.layers.adatape``) appends tape tokens
  before block ``tape_layer``; ``out`` then holds ``tape_tokens_used``, ``ponder_cost`` and
  ``tape_segment_ids``.
  """
  config: ViTConfig

  @nn.compact
  def __call__(self, x, segment_ids, deterministic=True, tape=None, tape_layer=0):
    c = self.config
    mask = segment_mask(segment_ids)
    out = {}
    dense = c.num_dense_layers

    def append_tape(x, segment_ids):
      x, segment_ids, read = tape(x, segment_ids)
      out.update(tape_tokens_used=read.num_tokens, ponder_cost=read.ponder,
                 tape_segment_ids=segment_ids)
      return x, segment_ids, segment_mask(segment_ids)

    if c.scan:
      step = _ScanStep
      if c.remat:
        # Inside scan, CSE cannot defeat rematerialisation, so its prevention is pure cost.
        step = nn.remat(step, policy=getattr(jax.checkpoint_policies, c.remat_policy),
                        prevent_cse=False, static_argnums=(3,))
      # Dense and Soft MoE blocks have different parameters, so each kind is its own stack; the
      # tape lengthens the sequence, so the stack it falls inside is split there.
      for first, length, use_moe, name in _stacks(dense, c.depth,
                                                  tape_layer if tape is not None else None):
        if tape is not None and first == tape_layer:
          x, segment_ids, mask = append_tape(x, segment_ids)
        x, per_layer = nn.scan(
            step, variable_axes={"params": 0, MOE_METRICS: 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=length,
            metadata_params={nn.PARTITION_NAME: "layers"})(config=c, use_moe=use_moe, name=name)(
                x, mask, deterministic, segment_ids)
        for i in range(length):
          out[f"block{first + i:02d}"] = per_layer[i]
    else:
      block_cls = c.block
      if c.remat:
        block_cls = nn.remat(block_cls, policy=getattr(jax.checkpoint_policies, c.remat_policy),
                             static_argnums=(3,))
      for i in range(c.depth):
        if tape is not None and i == tape_layer:
          x, segment_ids, mask = append_tape(x, segment_ids)
        x = block_cls(config=c, use_moe=i >= dense, name=f"block{i:02d}")(
            x, mask, deterministic, segment_ids)
        out[f"block{i:02d}"] = x
    x = LayerNorm(use_bias=c.norm_bias, epsilon=c.layer_norm_eps, dtype=c.compute_dtype,
                  param_dtype=c.params_dtype, name="encoder_norm")(x)
    return x, out


def _make_patch_embed(c: ViTConfig, name: str):
  kw = dict(width=c.width, patch_size=c.patch_size, dtype=c.compute_dtype,
            param_dtype=c.params_dtype, name=name)
  if c.patch_embed is DualPatchNormEmbed:
    return DualPatchNormEmbed(norm_bias=c.norm_bias, epsilon=c.layer_norm_eps, **kw)
  return c.patch_embed(**kw)


def _make_posemb(c: ViTConfig, name: str):
  grid = (c.image_size // c.patch_size,) * 2
  if c.posemb is LearnedPosEmb:
    return LearnedPosEmb(grid=grid, width=c.width, param_dtype=c.params_dtype, name=name)
  if c.posemb is FactorizedPosEmb:
    return FactorizedPosEmb(max_grid=c.posemb_max_grid, width=c.width,
                            fractional=c.posemb_fractional, param_dtype=c.params_dtype, name=name)
  if c.posemb is SinCosFactorizedPosEmb:
    return SinCosFactorizedPosEmb(width=c.width, fractional=c.posemb_fractional,
                                  max_grid=c.posemb_max_grid, name=name)
  if c.posemb is SinCos2DPosEmb:
    return SinCos2DPosEmb(width=c.width, max_grid=c.posemb_max_grid, name=name)
  return c.posemb(width=c.width, name=name)


def _make_pool(c: ViTConfig, name: str):
  if c.pool is MAPHead:
    return MAPHead(num_heads=c.num_heads, mlp_dim=c.mlp_dim, activation=c.mlp_activation,
                   layer_norm_eps=c.layer_norm_eps, dtype=c.compute_dtype,
                   param_dtype=c.params_dtype, name=name)
  return c.pool(name=name)


class ViT(nn.Module):
  """Images ``[B, H, W, 3]`` -> ``(pooled or tokens, out)``. See the module docstring."""
  config: ViTConfig

  def setup(self):
    c = self.config.resolved()
    self.cfg = c
    self.embedding = _make_patch_embed(c, "embedding")
    self.posemb = _make_posemb(c, "posemb")
    if c.class_token:
      self.cls = self.param("cls", nn.with_logical_partitioning(inits.zeros, (None, None, "embed")),
                            (1, 1, c.width), c.params_dtype)
      if c.posemb is LearnedPosEmb:
        self.cls_posemb = self.param(
            "cls_posemb", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
            (c.width,), c.params_dtype)
    self.encoder = Encoder(c, name="Transformer")
    if c.adatape is not None:
      self.tape = AdaTape(c.adatape, c.width, layer_norm_eps=c.layer_norm_eps,
                          dtype=c.compute_dtype, param_dtype=c.params_dtype, name="tape")
    self.head = _make_pool(c, "pool")
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, images, *, train: bool = False) -> Tuple[Any, dict]:
    c = self.cfg
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"ViT expects images of shape [batch, height, width, 3]; got shape "
                       f"{tuple(images.shape)}")
    out = {}
    x, (gh, gw) = self.embedding(images.astype(c.compute_dtype))
    out["stem"] = x
    b, n, _ = x.shape
    ys, xs = jnp.divmod(jnp.arange(n), gw)
    ys, xs = jnp.broadcast_to(ys, (b, n)), jnp.broadcast_to(xs, (b, n))
    x = x + self.posemb(ys, xs, (gh, gw)).astype(x.dtype)
    if c.class_token:
      cls = self.cls.astype(x.dtype)
      if c.posemb is LearnedPosEmb:
        cls = cls + self.cls_posemb.astype(x.dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)), x], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    out["with_posemb"] = x
    x = self.dropout(x, deterministic=not train)
    segment_ids = jnp.ones(x.shape[:2], jnp.int32)
    tape, tape_layer = None, 0
    if c.adatape is not None:  # the encoder appends tape tokens read from the images' bank
      tape = functools.partial(self.tape, bank_input=images.astype(c.compute_dtype),
                               deterministic=not train)
      tape_layer = c.adatape.tape_layer
    x, blocks = self.encoder(x, segment_ids, deterministic=not train, tape=tape,
                             tape_layer=tape_layer)
    out.update(blocks)
    out["encoded"] = x
    segment_ids = blocks.get("tape_segment_ids", segment_ids)
    pooled = self.head(x, segment_ids > 0, deterministic=not train)
    out["pre_logits"] = pooled
    return pooled, out

  def encode_packed(self, patches, image_ids, ys, xs, grid_sizes, *, train: bool = False,
                    added_embedding=None) -> Tuple[Any, dict]:
    """Packed sequences (NaViT) -> ``(one vector per image slot [B, K, D], out)``.

    Args:
      patches: float ``[B, L, p*p*3]``, pixels in ``palix.layers.patch.patchify``'s order.
      image_ids: int ``[B, L]``: 0 for padding, ``k`` in ``1..K`` for the image in slot ``k-1``.
      ys, xs: int ``[B, L]``: each token's patch coordinates in its own image.
      grid_sizes: int ``[B, K, 2]``: each slot's patch grid ``(gh, gw)`` (what fractional
        position embeddings divide by; 0 for an empty slot).
      train: dropout.
      added_embedding: optional ``[B, L, D]`` added with the position embedding (PaLI-X adds a
        time embedding to the frames of a clip, ``palix.models.palix_model``).

    Tokens attend only to tokens of their own image (``image_ids`` are the segment ids of the
    attention mask); the pooling head pools each slot's tokens. With ``NoPool`` the output is
    every token ``[B, L, D]``. An empty slot pools to zeros. ``out`` holds ``stem``,
    ``with_posemb``, the blocks, ``encoded`` and ``pre_logits`` as for ``__call__``.
    """
    c = self.cfg
    b, length = image_ids.shape
    p2c = c.patch_size * c.patch_size * 3
    if patches.shape != (b, length, p2c):
      raise ValueError(f"packed patches have shape {tuple(patches.shape)}; expected "
                       f"[batch, length, patch_size^2 * 3] = [{b}, {length}, {p2c}] (the shape "
                       "of image_ids plus the pixels of one patch)")
    if ys.shape != (b, length) or xs.shape != (b, length):
      raise ValueError(f"ys and xs have shapes {tuple(ys.shape)} and {tuple(xs.shape)}; expected "
                       f"[{b}, {length}] like image_ids")
    if grid_sizes.ndim != 3 or grid_sizes.shape[0] != b or grid_sizes.shape[2] != 2:
      raise ValueError(f"grid_sizes has shape {tuple(grid_sizes.shape)}; expected "
                       f"[{b}, num_image_slots, 2]")
    if c.adatape is not None:
      raise ValueError("ViTConfig.adatape is not supported for packed sequences (the tape is "
                       "one per row, not one per image)")
    if c.class_token:
      raise ValueError("ViTConfig.class_token is not supported for packed sequences (one class "
                       "token per image would need its own slot in every row)")
    out = {}
    x = self.embedding.embed_patches(patches.astype(c.compute_dtype))
    out["stem"] = x
    slots = grid_sizes.shape[1]
    slot = jnp.clip(image_ids - 1, 0, slots - 1)
    grid_h = jnp.take_along_axis(grid_sizes[..., 0], slot, axis=1)
    grid_w = jnp.take_along_axis(grid_sizes[..., 1], slot, axis=1)
    x = x + self.posemb(ys, xs, (grid_h, grid_w)).astype(x.dtype)
    if added_embedding is not None:
      x = x + added_embedding.astype(x.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    out["with_posemb"] = x
    x = self.dropout(x, deterministic=not train)
    x, blocks = self.encoder(x, image_ids, deterministic=not train)
    out.update(blocks)
    out["encoded"] = x
    if c.pool is NoPool:
      pooled = x
    else:
      assignment = image_ids[:, None, :] == jnp.arange(1, slots + 1)[None, :, None]
      pooled = self.head(x, assignment, deterministic=not train)
    out["pre_logits"] = pooled
    return pooled, out


for _cls in (SequentialBlock, ParallelBlock, ConvPatchEmbed, DualPatchNormEmbed, LearnedPosEmb,
             SinCos2DPosEmb, FactorizedPosEmb, SinCosFactorizedPosEmb, NoPool, GlobalAveragePool,
             MAPHead, Mlp, gelu_exact, gelu_tanh):
  gin.constant(f"vit.{_cls.__name__}", _cls)


@gin.configurable
class VisionEncoder:
  """A ViT as a stand-alone model spec: the module plus the input it expects.

  Tools that only need shapes (``palix params``) take any object with ``module`` and
  ``example_inputs(batch_size)``; the full model contract (PaLI-X, CapPa) provides the same two.
  """

  def __init__(self, config: ViTConfig = gin.REQUIRED, image_size: Optional[int] = None):
    self.config = config.resolved()
    self.module = ViT(self.config)
    self.image_size = image_size or self.config.image_size

  def example_inputs(self, batch_size: int = 1):
    shape = (batch_size, self.image_size, self.image_size, 3)
    return {"images": jax.ShapeDtypeStruct(shape, jnp.float32)}
