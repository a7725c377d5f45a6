"""Export palix T5 and ViT weights as Hugging Face folders: ``config.json`` + ``model.safetensors``.

The inverse of ``palix.interop.hf_t5`` and ``palix.interop.hf_vit``: ``load_hf_t5`` /
``load_hf_vit`` of an exported folder give back the same parameters bit for bit (same dtype), and
``transformers`` loads the folder as ``T5ForConditionalGeneration`` / ``ViTModel`` computing the
same outputs. No torch or transformers is needed to export.

* T5 (``T5Config``: T5.1.1's gated GELU or UL2's gated SiLU): ``config.json`` has
  ``feed_forward_proj`` ``gated-gelu`` / ``gated-silu``. A separate output layer
  (``logits_dense``, T5.1.1) is written as ``lm_head.weight`` with ``tie_word_embeddings: false``
  (transformers 5 reads such a config as tied but keeps an ``lm_head`` that differs from
  ``shared``, and warns); ``logits_via_embedding`` (original T5) is ``tie_word_embeddings`` and
  ``scale_decoder_outputs`` true, without ``lm_head``. The relative position tables are written
  once per stack, in block 0, as Hugging Face stores them.
* ViT: the palix ViTs that ``ViTModel`` can express: pre-LN blocks, conv stem, learned position
  table, a class token with its own position row, QKV/norm/MLP biases, exact or tanh GELU
  (``hidden_act`` ``gelu`` / ``gelu_pytorch_tanh``), no QK-norm, and no parameters in the pooling
  (``NoPool`` or ``GlobalAveragePool``: ``last_hidden_state`` equals palix's ``out['encoded']``).
  The folder has no ``pooler`` (load with ``ViTModel.from_pretrained(folder,
  add_pooling_layer=False)``).

Scanned parameters (``scan=True``) are unstacked into Hugging Face's per-layer names.
"""

import dataclasses
import json
import pathlib
from typing import Any, Dict, Mapping, Tuple, Union

import flax.linen as nn
import jax
import numpy as np

from palix.layers.mlp import Mlp, gelu_exact, gelu_tanh
from palix.layers.patch import ConvPatchEmbed
from palix.layers.pooling import GlobalAveragePool, NoPool
from palix.layers.position import LearnedPosEmb
from palix.models.t5_config import T5Config, silu
from palix.models.vit import SequentialBlock, ViTConfig

_T5_FEED_FORWARD = {gelu_tanh: "gated-gelu", silu: "gated-silu"}
_VIT_HIDDEN_ACT = {gelu_exact: "gelu", gelu_tanh: "gelu_pytorch_tanh"}


def _unstacked(stacked: Mapping, count: int):
  """Per-layer dicts of a scanned stack (parameters stacked on axis 0)."""
  return [jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked) for i in range(count)]


def _layers(stack: Mapping, count: int, scanned: bool):
  """Per-layer parameter dicts of a palix T5 stack (``layers_<i>`` or one scanned ``layers``)."""
  if scanned:
    return _unstacked(stack["layers"], count)
  return [stack[f"layers_{i}"] for i in range(count)]


def _linear(kernel) -> np.ndarray:
  """A palix kernel ``[*in, *out]`` (in: the leading axis, or ``[heads, head_dim]`` of an output
  projection) -> a torch ``Linear.weight`` ``[out, in]``."""
  return np.ascontiguousarray(np.asarray(kernel).T)


def _t5_attention(prefix: str, p: Mapping, c: T5Config) -> Dict[str, np.ndarray]:
  inner = c.num_heads * c.head_dim
  out = {f"{prefix}{hf}.weight": _linear(np.asarray(p[ours]["kernel"]).reshape(c.emb_dim, inner))
         for ours, hf in (("query", "q"), ("key", "k"), ("value", "v"))}
  out[f"{prefix}o.weight"] = _linear(np.asarray(p["out"]["kernel"]).reshape(inner, c.emb_dim))
  return out


def _t5_mlp(prefix: str, p: Mapping) -> Dict[str, np.ndarray]:
  return {f"{prefix}{name}.weight": _linear(p[name]["kernel"]) for name in ("wi_0", "wi_1", "wo")}


def t5_state_dict(params: Mapping, config: T5Config) -> Dict[str, np.ndarray]:
  """Hugging Face ``T5ForConditionalGeneration`` tensors (checkpoint names) of palix T5 params."""
  c = config.validate()
  params = nn.meta.unbox(params)  # init() output (logical-axis boxes) works too
  if c.activation not in _T5_FEED_FORWARD:
    raise ValueError(f"T5Config.activation {c.activation!r} has no Hugging Face "
                     "feed_forward_proj (gated-gelu or gated-silu)")
  sd = {"shared.weight": np.asarray(params["token_embedder"]["embedding"])}
  for i, layer in enumerate(_layers(params["encoder"], c.num_encoder_layers, c.scan)):
    p = f"encoder.block.{i}.layer."
    sd[p + "0.layer_norm.weight"] = np.asarray(layer["pre_attention_layer_norm"]["scale"])
    sd.update(_t5_attention(p + "0.SelfAttention.", layer["attention"], c))
    sd[p + "1.layer_norm.weight"] = np.asarray(layer["pre_mlp_layer_norm"]["scale"])
    sd.update(_t5_mlp(p + "1.DenseReluDense.", layer["mlp"]))
  for i, layer in enumerate(_layers(params["decoder"], c.num_decoder_layers, c.scan)):
    p = f"decoder.block.{i}.layer."
    sd[p + "0.layer_norm.weight"] = np.asarray(layer["pre_self_attention_layer_norm"]["scale"])
    sd.update(_t5_attention(p + "0.SelfAttention.", layer["self_attention"], c))
    sd[p + "1.layer_norm.weight"] = np.asarray(layer["pre_cross_attention_layer_norm"]["scale"])
    sd.update(_t5_attention(p + "1.EncDecAttention.", layer["encoder_decoder_attention"], c))
    sd[p + "2.layer_norm.weight"] = np.asarray(layer["pre_mlp_layer_norm"]["scale"])
    sd.update(_t5_mlp(p + "2.DenseReluDense.", layer["mlp"]))
  for stack in ("encoder", "decoder"):
    sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = np.asarray(
        params[stack]["relpos_bias"]["rel_embedding"])
  sd["encoder.final_layer_norm.weight"] = np.asarray(params["encoder"]["encoder_norm"]["scale"])
  sd["decoder.final_layer_norm.weight"] = np.asarray(params["decoder"]["decoder_norm"]["scale"])
  if not c.logits_via_embedding:
    sd["lm_head.weight"] = _linear(params["logits_dense"]["kernel"])
  return sd


def t5_hf_config(config: T5Config) -> dict:
  """``config.json`` of the exported ``T5ForConditionalGeneration``."""
  c = config.validate()
  tied = bool(c.logits_via_embedding)
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": c.vocab_size, "d_model": c.emb_dim, "d_kv": c.head_dim, "d_ff": c.mlp_dim,
      "num_layers": c.num_encoder_layers, "num_decoder_layers": c.num_decoder_layers,
      "num_heads": c.num_heads, "relative_attention_num_buckets": c.relative_attention_num_buckets,
      "relative_attention_max_distance": c.relative_attention_max_distance,
      "dropout_rate": c.dropout_rate, "layer_norm_epsilon": c.layer_norm_eps,
      "feed_forward_proj": _T5_FEED_FORWARD[c.activation], "is_encoder_decoder": True,
      "tie_word_embeddings": tied, "scale_decoder_outputs": tied,
      "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
      "dtype": str(np.dtype(c.params_dtype)),
  }


def _check_vit_exportable(c: ViTConfig) -> None:
  expected = dict(block=SequentialBlock, patch_embed=ConvPatchEmbed, posemb=LearnedPosEmb,
                  mlp=Mlp, class_token=True, qk_norm=False, qkv_bias=True, norm_bias=True,
                  mlp_bias=True, moe=None, adatape=None)
  wrong = {k: getattr(c, k) for k, v in expected.items() if getattr(c, k) != v}
  if c.pool not in (NoPool, GlobalAveragePool):
    wrong["pool"] = c.pool
  if c.mlp_activation not in _VIT_HIDDEN_ACT:
    wrong["mlp_activation"] = c.mlp_activation
  if wrong:
    names = {k: getattr(v, "__name__", v) for k, v in wrong.items()}
    raise ValueError(f"this ViT has no Hugging Face ViTModel counterpart: {names} (ViTModel is a "
                     "pre-LN ViT with a conv stem, a learned table, a class token and biases, "
                     "without QK-norm or a parametrised pooling head)")


def vit_state_dict(params: Mapping, config: ViTConfig) -> Dict[str, np.ndarray]:
  """Hugging Face ``ViTModel`` tensors (checkpoint names) of palix ViT params."""
  c = config.resolved()
  _check_vit_exportable(c)
  params = nn.meta.unbox(params)
  d = c.width
  conv = params["embedding"]["conv"]
  table = np.asarray(params["posemb"]["pos_embedding"])
  sd = {
      "embeddings.cls_token": np.asarray(params["cls"]),
      "embeddings.position_embeddings": np.concatenate(
          [np.asarray(params["cls_posemb"])[None], table])[None],
      "embeddings.patch_embeddings.projection.weight": np.ascontiguousarray(
          np.asarray(conv["kernel"]).transpose(3, 2, 0, 1)),  # HWIO -> OIHW
      "embeddings.patch_embeddings.projection.bias": np.asarray(conv["bias"]),
      "layernorm.weight": np.asarray(params["Transformer"]["encoder_norm"]["scale"]),
      "layernorm.bias": np.asarray(params["Transformer"]["encoder_norm"]["bias"]),
  }
  if c.scan:
    blocks = _unstacked(params["Transformer"]["blocks"]["block"], c.depth)
  else:
    blocks = [params["Transformer"][f"block{i:02d}"] for i in range(c.depth)]
  for i, b in enumerate(blocks):
    p = f"encoder.layer.{i}."
    for ours, hf in (("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
      sd[f"{p}{hf}.weight"] = np.asarray(b[ours]["scale"])
      sd[f"{p}{hf}.bias"] = np.asarray(b[ours]["bias"])
    for name in ("query", "key", "value"):
      sd[f"{p}attention.attention.{name}.weight"] = _linear(
          np.asarray(b["attention"][name]["kernel"]).reshape(d, d))
      sd[f"{p}attention.attention.{name}.bias"] = np.asarray(
          b["attention"][name]["bias"]).reshape(d)
    sd[f"{p}attention.output.dense.weight"] = _linear(
        np.asarray(b["attention"]["out"]["kernel"]).reshape(d, d))
    sd[f"{p}attention.output.dense.bias"] = np.asarray(b["attention"]["out"]["bias"])
    for ours, hf in (("wi", "intermediate.dense"), ("wo", "output.dense")):
      sd[f"{p}{hf}.weight"] = _linear(b["mlp"][ours]["kernel"])
      sd[f"{p}{hf}.bias"] = np.asarray(b["mlp"][ours]["bias"])
  return sd


def vit_hf_config(config: ViTConfig) -> dict:
  """``config.json`` of the exported ``ViTModel``."""
  c = config.resolved()
  _check_vit_exportable(c)
  return {
      "architectures": ["ViTModel"], "model_type": "vit", "hidden_size": c.width,
      "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
      "intermediate_size": c.mlp_dim, "hidden_act": _VIT_HIDDEN_ACT[c.mlp_activation],
      "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
      "layer_norm_eps": c.layer_norm_eps, "image_size": c.image_size, "patch_size": c.patch_size,
      "num_channels": 3, "qkv_bias": True, "encoder_stride": c.patch_size,
      "dtype": str(np.dtype(c.params_dtype)),
  }


def save_hf_folder(folder: Union[str, pathlib.Path], hf_config: Mapping,
                   state_dict: Mapping[str, np.ndarray]) -> pathlib.Path:
  """Writes ``config.json`` and ``model.safetensors`` (``safetensors.numpy``; bfloat16 kept)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()},
            str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(dict(hf_config), indent=2) + "\n")
  return folder


def export_t5(folder, params, config: T5Config) -> pathlib.Path:
  return save_hf_folder(folder, t5_hf_config(config), t5_state_dict(params, config))


def export_vit(folder, params, config: ViTConfig) -> pathlib.Path:
  return save_hf_folder(folder, vit_hf_config(config), vit_state_dict(params, config))


def towers(model_config) -> Dict[str, Tuple[Any, str]]:
  """The exportable towers of a model's config: ``{'t5': (T5Config, key of its params),
  'vit': (ViTConfig, key)}`` (key ``''``: the whole tree). A ``T5Config`` or ``ViTConfig`` is one
  tower; configs with ``t5``/``vit`` fields (PaLI-X: ``text``/``vit``; the classifier and
  image-text models: ``vit``) have theirs."""
  if isinstance(model_config, T5Config):
    return {"t5": (model_config, "")}
  if isinstance(model_config, ViTConfig):
    return {"vit": (model_config.resolved(), "")}
  out = {}
  t5, vit = getattr(model_config, "t5", None), getattr(model_config, "vit", None)
  if isinstance(t5, T5Config):
    out["t5"] = (t5, "text")
  if isinstance(vit, ViTConfig):
    vit = vit.resolved()
    if "t5" in out:  # PaLI-X feeds every token to the text encoder: its ViT has no pooling
      vit = dataclasses.replace(vit, pool=NoPool)
    out["vit"] = (vit, "vit")
  if not out:
    raise ValueError(f"{type(model_config).__name__} has no T5 or ViT tower to export")
  return out
