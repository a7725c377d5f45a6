"""Import big_vision ViT parameter files (``.npz``) into palix's ViT, with their linear head.

big_vision writes a checkpoint as ``np.savez`` of its tree flattened with ``/``
(``big_vision.utils.save_checkpoint``): a training checkpoint holds ``params/...`` (and
``opt/...``), an exported one the parameters alone; two-tower models (SigLIP) keep the image
tower under ``img/`` (``params/img/...``). The file carries no configuration, so the ViT is
read off the shapes: width, patch size and stem from ``embedding/kernel``, depth from the
blocks, heads from an attention kernel, the MLP width from ``Dense_0``, the position embedding
from ``pos_embedding`` (learned; none: 2-D sin-cos), the pooling from ``MAPHead_0`` (MAP) or the
``pool`` argument (big_vision's default ``gap``), a head from ``head/kernel``.

Names after the prefix, big_vision -> palix ``ViT`` (the table is in docs/convert.md):

* ``embedding/kernel`` ``[p, p, 3, D]`` (conv stem) -> ``embedding/conv/kernel``; ``[p*p*3, D]``
  with ``patchln_pre``/``patchln_post`` (Dual PatchNorm) -> ``embedding/{patchln_pre, embedding,
  patchln_post}``; ``[p*p*3, D]`` alone -> the conv kernel, reshaped;
* ``pos_embedding`` ``[1, g*g, D]`` or ``[g, g, D]`` -> ``posemb/pos_embedding`` ``[g*g, D]``; old
  files' ``[1, 1 + g*g, D]`` -> ``cls_posemb`` + the table; none -> ``SinCos2DPosEmb``;
* ``cls`` -> ``cls`` (``cls_posemb`` = 0: big_vision adds the table before the class token);
* ``Transformer/encoderblock_{i}/`` (scanned: ``Transformer/encoderblock/``, layers on axis 0)
  ``LayerNorm_0``, ``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0/Dense_0``,
  ``Dense_1`` -> ``Transformer/block{i:02d}/`` (``Transformer/blocks/block/``) ``norm1``,
  ``attention``, ``norm2``, ``mlp/wi``, ``mlp/wo``; ``Transformer/encoder_norm`` -> the same;
* ``MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}`` ->
  ``pool/{probe, attention, norm, mlp}``;
* ``head/{kernel, bias}`` -> the classifier's ``head`` (``ImageClassifier``).

The MLPs use flax's default (tanh) GELU, so the imported ``ViTConfig.mlp_activation`` is
``gelu_tanh``; the layer norms use flax's epsilon 1e-6. The older names
``Transformer/posembed_input/pos_embedding`` and ``Transformer/pos_embedding`` are read as
``pos_embedding``. A ``pre_logits`` layer (``rep_size``) has no palix counterpart and is refused.

Position-embedding resizing (``image_size`` other than the stored grid) is big_vision's
``resample_posemb``: the ``g x g`` table is zoomed to the new grid with linear interpolation on
corner-aligned coordinates (``scipy.ndimage.zoom(order=1)``), as big_vision does when it
fine-tunes at a higher resolution. (palix's ``LearnedPosEmb`` resizes at run time with
``jax.image.resize``, half-pixel centres; importing at the resolution used avoids that.)
"""

import dataclasses
import math
import pathlib
import re
import zipfile
from typing import Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
from flax import traverse_util

from palix.interop import param_mapping
from palix.interop.param_mapping import Rule, source
from palix.layers.mlp import gelu_tanh
from palix.layers.patch import ConvPatchEmbed, DualPatchNormEmbed
from palix.layers.pooling import GlobalAveragePool, MAPHead, NoPool
from palix.layers.position import LearnedPosEmb, SinCos2DPosEmb
from palix.models.vit import SequentialBlock, ViT, ViTConfig

POOLS = {"gap": GlobalAveragePool, "map": MAPHead, "none": NoPool}
# Options that keep the function the weights compute.
ALLOWED_OVERRIDES = ("scan", "remat", "remat_policy", "dtype", "param_dtype", "attention_impl",
                     "dropout_rate")
_OLD_POSEMB_NAMES = ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding")
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
# palix block / MAP-head submodule -> big_vision module name.
_BLOCK_PARTS = {"norm1": "LayerNorm_0", "attention": "MultiHeadDotProductAttention_0",
                "norm2": "LayerNorm_1", "mlp/wi": "MlpBlock_0/Dense_0",
                "mlp/wo": "MlpBlock_0/Dense_1"}
_MAP_PARTS = {"probe": "probe", "attention": "MultiHeadDotProductAttention_0",
              "norm": "LayerNorm_0", "mlp/wi": "MlpBlock_0/Dense_0", "mlp/wo": "MlpBlock_0/Dense_1"}


@dataclasses.dataclass
class BigVisionViT:
  """An imported tower: the ViT's config and params, and the linear head if the file has one.

  ``head`` is ``{'kernel': [D, C], 'bias': [C]}`` (big_vision's classification head, or SigLIP's
  projection to the joint embedding) or None.
  """
  config: ViTConfig
  params: dict
  head: Optional[dict]
  source: str

  @property
  def num_classes(self) -> Optional[int]:
    return None if self.head is None else int(self.head["kernel"].shape[-1])


def read_npz(path: Union[str, pathlib.Path]) -> Dict[str, np.ndarray]:
  """Every array of an ``.npz`` file by name; object arrays (pickles) are refused."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"big_vision parameter file {path} does not exist")
  with open(path, "rb") as f:
    if f.read(4) != b"PK\x03\x04":  # np.load would try anything else as a pickle
      raise ValueError(f"{path}: not an .npz file (a zip archive of .npy arrays)")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {name: npz[name] for name in npz.files}
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"{path}: not an .npz file ({e})") from None
  except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
    raise ValueError(f"{path}: holds pickled object arrays, which palix never loads "
                     f"({e})") from None


def tower_arrays(arrays: Mapping[str, np.ndarray], prefix: Optional[str] = None
                 ) -> Tuple[Dict[str, np.ndarray], str]:
  """The ViT's arrays with their prefix removed, and the prefix.

  ``params/`` (a training checkpoint; ``opt/`` is left out) is dropped first. ``prefix`` names
  the tower (``'img/'``); None finds it: ``img/`` when the file has one (a two-tower model such
  as SigLIP), otherwise the root.
  """
  names = list(arrays)
  if any(n.startswith("params/") for n in names):
    arrays = {n[len("params/"):]: v for n, v in arrays.items() if n.startswith("params/")}
  if prefix is None:
    prefix = "img/" if any(n.startswith("img/") for n in arrays) else ""
  if prefix and not prefix.endswith("/"):
    prefix += "/"
  tower = {n[len(prefix):]: v for n, v in arrays.items() if n.startswith(prefix)}
  if not tower:
    tops = sorted({n.split("/")[0] for n in arrays})
    raise ValueError(f"no arrays under the prefix {prefix!r} (top-level names: {tops})")
  for old in _OLD_POSEMB_NAMES:
    if old in tower:
      tower["pos_embedding"] = tower.pop(old)
  return tower, prefix


def resize_posemb(table: np.ndarray, grid: int) -> np.ndarray:
  """A ``[g*g, D]`` position table zoomed to ``[grid*grid, D]`` (big_vision's ``resample_posemb``:
  linear interpolation, corner-aligned)."""
  old = math.isqrt(table.shape[0])
  if old * old != table.shape[0]:
    raise ValueError(f"position table of {table.shape[0]} rows is not a square grid")
  if old == grid:
    return table
  zoomed = scipy.ndimage.zoom(table.reshape(old, old, -1).astype(np.float32),
                              (grid / old, grid / old, 1), order=1)
  return zoomed.reshape(grid * grid, -1).astype(table.dtype)


def posemb_layout(table: np.ndarray, class_token: bool) -> Tuple[int, bool]:
  """``(grid side g, whether row 0 is the class token's)`` of a stored ``pos_embedding``:
  ``[1, g*g, D]``, ``[g, g, D]`` or, in old files with a class token, ``[1, 1 + g*g, D]``."""
  if table.ndim == 3 and table.shape[0] == table.shape[1] and table.shape[0] > 1:
    return table.shape[0], False
  if table.ndim == 3 and table.shape[0] == 1:
    rows = table.shape[1]
    if math.isqrt(rows) ** 2 == rows:
      return math.isqrt(rows), False
    if class_token and math.isqrt(rows - 1) ** 2 == rows - 1:
      return math.isqrt(rows - 1), True
  raise ValueError(f"'pos_embedding' has shape {table.shape}; expected [1, g*g, width], "
                   "[g, g, width] or (with a class token) [1, 1 + g*g, width]")


def _depth_and_scan(tower: Mapping[str, np.ndarray]) -> Tuple[int, bool]:
  scanned = "Transformer/encoderblock/LayerNorm_0/scale" in tower
  indices = sorted({int(m.group(1)) for n in tower for m in [_BLOCK.match(n)] if m})
  if scanned and indices:
    raise ValueError("the file has both scanned (Transformer/encoderblock/) and unrolled "
                     "(Transformer/encoderblock_<i>/) blocks")
  if scanned:
    return int(tower["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]), True
  if not indices:
    raise ValueError("no transformer blocks (Transformer/encoderblock_0/... or "
                     "Transformer/encoderblock/...): not a big_vision ViT")
  if indices != list(range(len(indices))):
    missing = sorted(set(range(indices[-1] + 1)) - set(indices))
    raise ValueError(f"blocks {missing} are missing (found Transformer/encoderblock_<i> for i in "
                     f"{indices})")
  return len(indices), False


def _block_array(tower, scanned: bool, part: str) -> np.ndarray:
  name = f"Transformer/{'encoderblock' if scanned else 'encoderblock_0'}/{part}"
  if name not in tower:
    raise ValueError(f"missing {name!r}, needed to size the model")
  array = tower[name]
  return array[0] if scanned else array


def config_from_arrays(tower: Mapping[str, np.ndarray], *, pool: Optional[str] = None,
                       image_size: Optional[int] = None, **overrides) -> ViTConfig:
  """The ``ViTConfig`` of a tower's arrays (see the module docstring).

  Args:
    tower: arrays of one tower (``tower_arrays``).
    pool: ``'gap'``, ``'map'`` or ``'none'`` (every token); None: ``map`` when the file has a
      MAP head, ``none`` when it has a class token, else ``gap``.
    image_size: the resolution to run at; the learned table is resized to it. None: the stored
      table's resolution (224 for sin-cos embeddings, which have no table).
    overrides: ``ALLOWED_OVERRIDES`` (``scan``, dtypes, ...).
  """
  unknown = sorted(set(overrides) - set(ALLOWED_OVERRIDES))
  if unknown:
    raise ValueError(f"overrides {unknown} would change the model; allowed: "
                     f"{', '.join(ALLOWED_OVERRIDES)}")
  if "pre_logits/kernel" in tower:
    raise ValueError("the file has a pre_logits layer (big_vision's rep_size: Dense + tanh before "
                     "the head), which palix's ViT does not have")
  if "embedding/kernel" not in tower:
    raise ValueError(f"no 'embedding/kernel': not a big_vision ViT (names: {sorted(tower)[:6]})")
  stem = tower["embedding/kernel"]
  if stem.ndim == 4:
    if stem.shape[0] != stem.shape[1] or stem.shape[2] != 3:
      raise ValueError(f"'embedding/kernel' has shape {stem.shape}; a conv stem is "
                       "[patch, patch, 3, width] with a square patch")
    patch, width, patch_embed = stem.shape[0], stem.shape[3], ConvPatchEmbed
  elif stem.ndim == 2:
    patch = math.isqrt(stem.shape[0] // 3)
    if 3 * patch * patch != stem.shape[0]:
      raise ValueError(f"'embedding/kernel' has shape {stem.shape}; a Dense stem is "
                       "[patch * patch * 3, width]")
    width = stem.shape[1]
    norms = ("patchln_pre/scale" in tower, "patchln_post/scale" in tower)
    if any(norms) and not all(norms):
      raise ValueError("the file has only one of patchln_pre / patchln_post; palix's Dual "
                       "PatchNorm stem has both")
    patch_embed = DualPatchNormEmbed if all(norms) else ConvPatchEmbed
  else:
    raise ValueError(f"'embedding/kernel' has shape {stem.shape}; expected a conv "
                     "[p, p, 3, width] or Dense [p*p*3, width] stem")
  depth, scanned = _depth_and_scan(tower)
  query = _block_array(tower, scanned, "MultiHeadDotProductAttention_0/query/kernel")
  mlp_in = _block_array(tower, scanned, "MlpBlock_0/Dense_0/kernel")
  if query.ndim != 3 or mlp_in.ndim != 2:
    raise ValueError(f"block 0: query kernel {query.shape} / MLP kernel {mlp_in.shape}; expected "
                     "[width, heads, head_dim] / [width, mlp_dim]")
  class_token = "cls" in tower
  grid, posemb = None, SinCos2DPosEmb
  if "pos_embedding" in tower:
    posemb = LearnedPosEmb
    grid, _ = posemb_layout(tower["pos_embedding"], class_token)
  has_map = "MAPHead_0/probe" in tower
  if pool is None:
    pool = "map" if has_map else ("none" if class_token else "gap")
  if pool not in POOLS:
    raise ValueError(f"pool {pool!r} is not one of {', '.join(POOLS)}")
  if (pool == "map") != has_map:
    raise ValueError(f"pool {pool!r} but the file {'has' if has_map else 'has no'} MAP head "
                     "(MAPHead_0)")
  if image_size is None:
    image_size = grid * patch if grid else 224
  if image_size % patch:
    raise ValueError(f"image_size {image_size} is not divisible by the patch size {patch}")
  config = ViTConfig(
      width=int(width), depth=depth, mlp_dim=int(mlp_in.shape[1]), num_heads=int(query.shape[1]),
      patch_size=int(patch), image_size=int(image_size), block=SequentialBlock,
      patch_embed=patch_embed, posemb=posemb, pool=POOLS[pool], mlp=None,
      mlp_activation=gelu_tanh, class_token=class_token, qk_norm=False, qkv_bias=True,
      norm_bias=True, mlp_bias=True, layer_norm_eps=1e-6, **overrides)
  return config.resolved()


def _palix_block_path(path: str, scanned_palix: bool) -> Optional[Tuple[Optional[int], str]]:
  """``(layer index or None for scanned, path inside the block)`` of a palix block parameter."""
  prefix = "Transformer/blocks/block/" if scanned_palix else None
  if prefix and path.startswith(prefix):
    return None, path[len(prefix):]
  match = re.match(r"^Transformer/block(\d+)/(.*)$", path)
  return (int(match.group(1)), match.group(2)) if match else None


def _bv_part(inner: str, parts: Mapping[str, str]) -> str:
  for ours, theirs in parts.items():
    if inner == ours or inner.startswith(ours + "/"):
      return theirs + inner[len(ours):]
  raise AssertionError(f"no big_vision name for {inner!r}")


def _rules(tower: Mapping[str, np.ndarray], config: ViTConfig, shapes: Mapping[str, tuple],
           scanned_source: bool):
  """One ``Rule`` per palix ViT parameter."""
  c = config
  rules = []
  depth = c.depth
  for path, shape in shapes.items():
    block = _palix_block_path(path, c.scan)
    if block is not None:
      index, inner = block
      part = _bv_part(inner, _BLOCK_PARTS)
      per_layer = tuple(shape[1:]) if index is None else tuple(shape)
      if scanned_source:
        src = source(f"Transformer/encoderblock/{part}", (depth,) + per_layer)
        convert = (lambda a: a) if index is None else (lambda a, i=index: a[i])
        rules.append(Rule(path, (src,), convert))
      elif index is None:
        srcs = tuple(source(f"Transformer/encoderblock_{i}/{part}", per_layer)
                     for i in range(depth))
        rules.append(Rule(path, srcs, lambda *xs: np.stack(xs)))
      else:
        rules.append(Rule(path, (source(f"Transformer/encoderblock_{index}/{part}", per_layer),),
                          lambda a: a))
    elif path.startswith("pool/"):
      part = "MAPHead_0/" + _bv_part(path[len("pool/"):], _MAP_PARTS)
      rules.append(Rule(path, (source(part, shape),), lambda a: a))
    elif path == "embedding/conv/kernel":
      p, d = c.patch_size, c.width
      rules.append(Rule(path, (source("embedding/kernel", shape, (p * p * 3, d)),),
                        lambda a, s=shape: a.reshape(s)))
    elif path.startswith("embedding/"):  # the conv bias; Dual PatchNorm's norms and Dense
      inner = path[len("embedding/"):]
      name = ("embedding/" + inner[len("conv/"):]) if inner.startswith("conv/") else inner
      rules.append(Rule(path, (source(name, shape),), lambda a: a))
    elif path == "posemb/pos_embedding":
      rules.append(_posemb_rule(tower, c))
    elif path == "cls_posemb":  # big_vision adds the table before the class token: zero, or
      table = tower["pos_embedding"]  # row 0 of an old table that included the token
      if posemb_layout(table, True)[1]:
        rules.append(Rule(path, (source("pos_embedding", table.shape),), lambda a: a[0, 0]))
      else:
        rules.append(Rule(path, (), lambda s=shape: np.zeros(s, np.float32)))
    else:  # cls, Transformer/encoder_norm/...
      rules.append(Rule(path, (source(path, shape),), lambda a: a))
  return rules


def _posemb_rule(tower, c: ViTConfig) -> Rule:
  table = tower["pos_embedding"]
  g, with_cls = posemb_layout(table, c.class_token)
  if table.shape[0] != 1:  # [g, g, D] (NaFlex-style 2-D table)
    flat = lambda a: a.reshape(g * g, -1)  # noqa: E731
  else:
    flat = (lambda a: a[0, 1:]) if with_cls else (lambda a: a[0])  # noqa: E731
  stored = tuple(table.shape[:-1]) + (c.width,)
  grid = c.image_size // c.patch_size
  return Rule("posemb/pos_embedding", (source("pos_embedding", stored),),
              lambda a: resize_posemb(flat(a), grid))


def import_arrays(arrays: Mapping[str, np.ndarray], *, prefix: Optional[str] = None,
                  pool: Optional[str] = None, image_size: Optional[int] = None,
                  drop_head: bool = False, what: str = "big_vision parameters",
                  **overrides) -> BigVisionViT:
  """Config, params and head from a file's arrays (``read_npz``); see ``config_from_arrays``.

  ``drop_head`` leaves a ``head`` out (to use the tower as an encoder). Raises ``ValueError``
  listing every missing, extra or mis-shaped array (source path, palix path, both shapes).
  """
  tower, prefix = tower_arrays(arrays, prefix)
  config = config_from_arrays(tower, pool=pool, image_size=image_size, **overrides)
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
  shapes = param_mapping.abstract_shapes(lambda r, x: ViT(config).init(r, x), images)
  _, scanned_source = _depth_and_scan(tower)
  has_head = "head/kernel" in tower
  ignored = ("head/kernel", "head/bias") if drop_head else ()
  if has_head and not drop_head and config.pool is NoPool:
    raise ValueError("the file has a head but the pool is 'none' (every token); a head needs one "
                     "vector per image: pool 'gap'/'map', or drop_head (--drop_head) to import "
                     "the encoder alone")
  rules = _rules(tower, config, shapes, scanned_source)
  if has_head and not drop_head:
    kernel = tower["head/kernel"]
    if kernel.ndim != 2:
      raise ValueError(f"'head/kernel' has shape {kernel.shape}; expected [width, classes]")
    head_shapes = {"head/kernel": (config.width, kernel.shape[1]), "head/bias": (kernel.shape[1],)}
    rules += [Rule(name, (source(name, s),), lambda a: a) for name, s in head_shapes.items()]
    shapes = {**shapes, **head_shapes}
  flat = param_mapping.apply_rules(tower, rules, what=f"{what} (prefix {prefix!r})",
                                   target_shapes=shapes, ignored=ignored)
  dtype = config.params_dtype
  flat = {k: np.asarray(v).astype(dtype) for k, v in flat.items()}
  head = None
  if "head/kernel" in flat:
    head = {"kernel": flat.pop("head/kernel"), "bias": flat.pop("head/bias")}
  return BigVisionViT(config, traverse_util.unflatten_dict(flat, sep="/"), head, what)


def load_big_vision(path: Union[str, pathlib.Path], **kwargs) -> BigVisionViT:
  """``import_arrays`` of an ``.npz`` file."""
  return import_arrays(read_npz(path), what=f"big_vision file {path}", **kwargs)
