"""Import Hugging Face ``ViTModel`` weights into palix's ``ViT`` (numpy in, no torch needed).

Three entry points:

* ``vit_config_from_hf(hf_config, **overrides) -> ViTConfig``: ``hf_config`` is a
  ``transformers.ViTConfig`` or the parsed ``config.json`` dict;
* ``params_from_hf_state_dict(state_dict, config) -> params``: ``state_dict`` maps HF names to
  numpy arrays (torch tensors must be converted by the caller, e.g. ``t.numpy()``);
* ``load_hf_vit(folder, **overrides) -> (ViTConfig, params)``: reads ``config.json`` plus
  ``model.safetensors`` (or the shards listed in ``model.safetensors.index.json``). Pickled
  ``pytorch_model.bin`` files are refused: unpickling can run arbitrary code.

The HF ViT is a pre-LN ViT with a class token, a conv stem, a learned position table and an
erf-GELU MLP; ``out["encoded"]`` of the imported palix ViT equals HF's ``last_hidden_state``
(palix takes NHWC images, HF takes NCHW ``pixel_values``). ``hidden_act`` ``gelu`` is the
exact GELU, ``gelu_pytorch_tanh`` / ``gelu_new`` the tanh one (``ViTConfig.mlp_activation``). Both the checkpoint names written by
``save_pretrained`` (``encoder.layer.i.attention.attention.query``...) and the in-memory module
names of transformers 5 (``layers.i.attention.q_proj``...) are accepted, with or without the
``vit.`` prefix of ``ViTForImageClassification``. The ``pooler.*`` and ``classifier.*`` heads have
no counterpart in the palix ViT and are left out (named in the log); any other unused or missing
key is an error.
"""

import json
import logging
import pathlib
import re
from typing import Any, Dict, Mapping, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from palix.interop import shape_check
from palix.interop.safetensors_file import read_safetensors
from palix.layers.mlp import Mlp, gelu_exact, gelu_tanh
from palix.layers.patch import ConvPatchEmbed
from palix.layers.pooling import NoPool
from palix.layers.position import LearnedPosEmb
from palix.models.vit import SequentialBlock, ViT, ViTConfig

HEAD_PREFIXES = ("pooler.", "classifier.")
# HF hidden_act -> palix ViTConfig.mlp_activation.
_HIDDEN_ACTS = {"gelu": gelu_exact, "gelu_pytorch_tanh": gelu_tanh, "gelu_new": gelu_tanh}

# transformers>=5 module names -> the checkpoint names that save_pretrained writes.
_V5_LAYER_RENAMES = {
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}
_V5_LAYER = re.compile(r"^layers\.(\d+)\.(.*)$")


def _field(hf_config, name, default=None):
  if isinstance(hf_config, Mapping):
    return hf_config.get(name, default)
  return getattr(hf_config, name, default)


def _square(hf_config, name) -> int:
  value = _field(hf_config, name)
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"HF ViT config: {name}={value!r}; only square sizes are supported")
    value = value[0]
  if not isinstance(value, int):
    raise ValueError(f"HF ViT config: {name} must be an int, got {value!r}")
  return value


def vit_config_from_hf(hf_config: Any, **overrides) -> ViTConfig:
  """The palix ``ViTConfig`` computing the same function as an HF ``ViTModel`` with this config.

  ``overrides`` set the options that do not change the function (``scan``, ``remat``, ``dtype``,
  ``param_dtype``, ``attention_impl``); anything else would make the weights mismatch.
  """
  model_type = _field(hf_config, "model_type", "vit")
  if model_type != "vit":
    raise ValueError(f"HF config has model_type={model_type!r}; this importer reads 'vit'")
  act = _field(hf_config, "hidden_act", "gelu")
  if act not in _HIDDEN_ACTS:
    raise ValueError(f"HF ViT config: hidden_act={act!r} is not supported; palix's ViT has the "
                     f"exact (erf) and the tanh GELU ({', '.join(_HIDDEN_ACTS)})")
  if _field(hf_config, "num_channels", 3) != 3:
    raise ValueError(f"HF ViT config: num_channels={_field(hf_config, 'num_channels')}; palix's "
                     "ViT reads RGB images (3 channels)")
  if not _field(hf_config, "qkv_bias", True):
    raise ValueError("HF ViT config: qkv_bias=False keeps the attention output bias in HF, but "
                     "palix's qkv_bias=False removes both; this combination is not supported")
  allowed = {"scan", "remat", "remat_policy", "dtype", "param_dtype", "attention_impl"}
  if set(overrides) - allowed:
    raise ValueError(f"vit_config_from_hf: overrides {sorted(set(overrides) - allowed)} would "
                     f"change the model; allowed: {sorted(allowed)}")
  config = ViTConfig(
      width=_field(hf_config, "hidden_size"),
      depth=_field(hf_config, "num_hidden_layers"),
      mlp_dim=_field(hf_config, "intermediate_size"),
      num_heads=_field(hf_config, "num_attention_heads"),
      patch_size=_square(hf_config, "patch_size"),
      image_size=_square(hf_config, "image_size"),
      block=SequentialBlock, patch_embed=ConvPatchEmbed, posemb=LearnedPosEmb, pool=NoPool,
      mlp=Mlp, mlp_activation=_HIDDEN_ACTS[act], class_token=True, qk_norm=False, qkv_bias=True,
      norm_bias=True, mlp_bias=True, layer_norm_eps=float(_field(hf_config, "layer_norm_eps", 1e-12)),
      **overrides)
  return config.resolved()


def _canonical_names(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """Strip the ``vit.`` prefix and map transformers-5 module names to checkpoint names."""
  out = {}
  for key, value in state_dict.items():
    name = key[len("vit."):] if key.startswith("vit.") else key
    match = _V5_LAYER.match(name)
    if match:
      index, rest = match.groups()
      for new, old in _V5_LAYER_RENAMES.items():
        if rest.startswith(new):
          rest = old + rest[len(new):]
          break
      name = f"encoder.layer.{index}.{rest}"
    if name in out:
      raise ValueError(f"HF state dict: {key!r} and another key both map to {name!r}")
    out[name] = value
  return out


def _check_supported(config: ViTConfig) -> None:
  expected = dict(block=SequentialBlock, patch_embed=ConvPatchEmbed, posemb=LearnedPosEmb,
                  pool=NoPool, mlp=Mlp, class_token=True, qk_norm=False, qkv_bias=True,
                  norm_bias=True, mlp_bias=True)
  wrong = {k: getattr(config, k) for k, v in expected.items() if getattr(config, k) != v}
  if wrong:
    raise ValueError(f"an HF ViT maps onto ViTConfig with {expected}; this config differs in "
                     f"{wrong} (build it with vit_config_from_hf)")


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: ViTConfig) -> dict:
  """palix ``ViT`` params (nested dict of numpy arrays) from an HF ``ViTModel`` state dict.

  Raises ``ValueError`` naming the key for a missing or unexpected tensor or a shape that does
  not match ``config``.
  """
  c = config.resolved()
  _check_supported(c)
  sd = _canonical_names(state_dict)
  used = set()

  def take(name):
    if name not in sd:
      raise ValueError(f"HF state dict has no {name!r} (needed for a depth-{c.depth} ViT)")
    used.add(name)
    return np.asarray(sd[name])

  def linear(prefix):  # torch Linear weight is [out, in]; flax Dense kernel is [in, out]
    return take(prefix + ".weight").T, take(prefix + ".bias")

  h, hd, d = c.num_heads, c.head_dim, c.width
  layers = []
  for i in range(c.depth):
    p = f"encoder.layer.{i}."
    layer = {"norm1": {"scale": take(p + "layernorm_before.weight"),
                       "bias": take(p + "layernorm_before.bias")},
             "norm2": {"scale": take(p + "layernorm_after.weight"),
                       "bias": take(p + "layernorm_after.bias")},
             "attention": {}, "mlp": {}}
    for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
      kernel, bias = linear(p + "attention.attention." + theirs)
      layer["attention"][ours] = {"kernel": kernel.reshape(d, h, hd), "bias": bias.reshape(h, hd)}
    kernel, bias = linear(p + "attention.output.dense")
    layer["attention"]["out"] = {"kernel": kernel.reshape(h, hd, d), "bias": bias}
    for ours, theirs in (("wi", "intermediate.dense"), ("wo", "output.dense")):
      kernel, bias = linear(p + theirs)
      layer["mlp"][ours] = {"kernel": kernel, "bias": bias}
    layers.append(layer)

  posemb = take("embeddings.position_embeddings")
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f"HF 'embeddings.position_embeddings' has shape {posemb.shape}; "
                     "expected [1, 1 + num_patches, width]")
  conv = take("embeddings.patch_embeddings.projection.weight")
  if conv.ndim != 4:
    raise ValueError(f"HF 'embeddings.patch_embeddings.projection.weight' has shape "
                     f"{conv.shape}; expected [width, 3, patch, patch] (torch OIHW)")
  params = {
      "embedding": {"conv": {"kernel": conv.transpose(2, 3, 1, 0),  # OIHW -> HWIO
                             "bias": take("embeddings.patch_embeddings.projection.bias")}},
      "cls": take("embeddings.cls_token"),
      "cls_posemb": posemb[0, 0],
      "posemb": {"pos_embedding": posemb[0, 1:]},
      "Transformer": {"encoder_norm": {"scale": take("layernorm.weight"),
                                       "bias": take("layernorm.bias")}},
  }
  if c.scan:
    params["Transformer"]["blocks"] = {
        "block": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)}
  else:
    for i, layer in enumerate(layers):
      params["Transformer"][f"block{i:02d}"] = layer

  unused = sorted(set(sd) - used)
  heads = [k for k in unused if k.startswith(HEAD_PREFIXES)]
  unexpected = [k for k in unused if k not in heads]
  if unexpected:
    raise ValueError(f"HF state dict has {len(unexpected)} keys a depth-{c.depth} ViT does not "
                     f"use: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  if heads:
    logging.info("HF ViT import: left out the head tensors %s", heads)
  _check_shapes(params, c)
  dtype = c.params_dtype
  return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=dtype), params)


def _check_shapes(params: dict, c: ViTConfig) -> None:
  """Compare with the abstract ``ViT(c).init`` tree, naming every mismatching key."""
  images = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32)
  abstract = jax.eval_shape(lambda r, x: ViT(c).init(r, x), jax.random.PRNGKey(0), images)
  shape_check.check_fits(params, abstract["params"], "HF ViT",
                         needs=f"config {c.width}w/{c.patch_size}p/{c.image_size}px needs")


def load_hf_vit(folder: Union[str, pathlib.Path], **overrides) -> Tuple[ViTConfig, dict]:
  """``(ViTConfig, params)`` from an HF ViT folder (``config.json`` + safetensors weights)."""
  folder = pathlib.Path(folder)
  config_path = folder / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found (an HF model folder has config.json)")
  config = vit_config_from_hf(json.loads(config_path.read_text()), **overrides)
  index = folder / "model.safetensors.index.json"
  if (folder / "model.safetensors").exists():
    state_dict = read_safetensors(folder / "model.safetensors")
  elif index.exists():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state_dict = {}
    for shard in shards:
      state_dict.update(read_safetensors(folder / shard))
  elif list(folder.glob("*.bin")):
    names = sorted(p.name for p in folder.glob("*.bin"))
    raise ValueError(f"{folder} has only pickled weights {names}; palix never unpickles (it can "
                     "run code). Re-save them with model.save_pretrained(folder, "
                     "safe_serialization=True)")
  else:
    raise FileNotFoundError(f"{folder} has no model.safetensors or model.safetensors.index.json")
  return config, params_from_hf_state_dict(state_dict, config)
