"""Import Hugging Face ``T5ForConditionalGeneration`` weights (T5.1.1, mT5, UL2) into palix's T5.

Three entry points (numpy in; torch is never needed):

* ``t5_config_from_hf(hf_config, **overrides) -> T5Config``: ``hf_config`` is the parsed
  ``config.json`` dict or a ``transformers.T5Config``;
* ``params_from_hf_state_dict(state_dict, config) -> params``: HF names -> numpy arrays;
* ``load_hf_t5(folder, **overrides) -> (T5Config, params)``: ``config.json`` plus
  ``model.safetensors`` or the shards of ``model.safetensors.index.json``. Pickled ``*.bin``
  weights are refused (unpickling can run code).

Only the gated feed-forward variants exist in palix (``gated-gelu``: T5.1.1/mT5, ``gated-silu``:
UL2); original T5's ReLU MLP is refused with a clear error.

Output logits. Original T5 ties ``lm_head`` to the embedding and scales the decoder output by
``d_model ** -0.5``; T5.1.1 has a separate ``lm_head`` and no scaling. Configs written by
transformers 5 always say ``tie_word_embeddings: true`` and record the difference in
``scale_decoder_outputs``; older ones say ``tie_word_embeddings: false`` for T5.1.1. Both are read:
scaling means ``logits_via_embedding=True``; otherwise the logits use ``lm_head.weight`` when the
checkpoint has it, and a copy of the shared embedding (what transformers 5 then computes) when not.
"""

import json
import pathlib
from typing import Any, Dict, Mapping, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from palix.interop import shape_check
from palix.interop.safetensors_file import read_safetensors
from palix.models.t5 import T5EncoderDecoder
from palix.models.t5_config import T5Config, gelu_tanh, silu

# HF feed_forward_proj -> activation of the gated MLP ("gated-gelu" is HF's tanh "gelu_new").
_GATED_ACTIVATIONS = {
    "gated-gelu": gelu_tanh, "gated-gelu_new": gelu_tanh, "gated-gelu_pytorch_tanh": gelu_tanh,
    "gated-silu": silu, "gated-swish": silu,
}
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
SUPPORTED_MODEL_TYPES = ("t5", "mt5")


def _as_dict(hf_config: Any) -> Dict[str, Any]:
  if isinstance(hf_config, Mapping):
    return dict(hf_config)
  if hasattr(hf_config, "to_dict"):
    return hf_config.to_dict()
  raise TypeError(f"hf_config must be a config.json dict or a transformers config; got "
                  f"{type(hf_config).__name__}")


def uses_tied_scaled_logits(cfg: Mapping[str, Any]) -> bool:
  """True for original-T5 logits (tied embedding, output scaled by ``d_model ** -0.5``)."""
  if "scale_decoder_outputs" in cfg:
    return bool(cfg["scale_decoder_outputs"])
  return cfg.get("tie_word_embeddings", True) is not False


# Options that do not change the function the weights compute.
ALLOWED_OVERRIDES = ("scan", "remat", "remat_policy", "dtype", "param_dtype", "attention_impl",
                     "dropout_rate")


def t5_config_from_hf(hf_config: Any, **overrides) -> T5Config:
  """The ``T5Config`` computing the same function as an HF T5 with this config.

  ``overrides`` set options that keep the function (``ALLOWED_OVERRIDES``: ``scan``, dtypes, ...).
  """
  unknown = sorted(set(overrides) - set(ALLOWED_OVERRIDES))
  if unknown:
    raise ValueError(f"t5_config_from_hf: overrides {unknown} would change the model; allowed: "
                     f"{', '.join(ALLOWED_OVERRIDES)}")
  cfg = _as_dict(hf_config)
  model_type = cfg.get("model_type", "t5")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"HF config model_type {model_type!r} is not supported by the T5 importer "
                     f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
  missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
             if k not in cfg]
  if missing:
    raise ValueError(f"HF T5 config lacks {', '.join(missing)}")
  proj = cfg.get("feed_forward_proj", "relu")
  if proj not in _GATED_ACTIVATIONS:
    raise ValueError(f"HF T5 config feed_forward_proj={proj!r} is not supported: palix's T5 has the "
                     f"gated MLP only ({', '.join(sorted(_GATED_ACTIVATIONS))})")
  num_layers = cfg["num_layers"]
  fields = dict(
      vocab_size=cfg["vocab_size"], emb_dim=cfg["d_model"], num_heads=cfg["num_heads"],
      head_dim=cfg["d_kv"], mlp_dim=cfg["d_ff"], num_encoder_layers=num_layers,
      num_decoder_layers=cfg.get("num_decoder_layers") or num_layers,
      activation=_GATED_ACTIVATIONS[proj], dropout_rate=float(cfg.get("dropout_rate", 0.1)),
      logits_via_embedding=uses_tied_scaled_logits(cfg),
      relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
      layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-6)))
  fields.update(overrides)
  return T5Config(**fields).validate()


def _linear(get, name, in_shape, out_shape):
  """torch ``Linear.weight [out, in]`` -> kernel ``in_shape + out_shape`` (heads split out)."""
  w = np.asarray(get(name))
  expected = (int(np.prod(out_shape)), int(np.prod(in_shape)))
  if w.shape != expected:
    raise ValueError(f"HF T5 {name!r} has shape {w.shape}; the config needs {expected} "
                     "(torch Linear [out, in])")
  return np.ascontiguousarray(w.T).reshape(tuple(in_shape) + tuple(out_shape))


def _attention(get, prefix, c: T5Config) -> dict:
  d, heads = (c.emb_dim,), (c.num_heads, c.head_dim)
  return {
      "query": {"kernel": _linear(get, prefix + "q.weight", d, heads)},
      "key": {"kernel": _linear(get, prefix + "k.weight", d, heads)},
      "value": {"kernel": _linear(get, prefix + "v.weight", d, heads)},
      "out": {"kernel": _linear(get, prefix + "o.weight", heads, d)},
  }


def _transposed(w):
  return np.ascontiguousarray(np.asarray(w).T)


def _mlp(get, prefix) -> dict:
  return {name: {"kernel": _transposed(get(f"{prefix}{name}.weight"))}
          for name in ("wi_0", "wi_1", "wo")}


def _scale(get, name) -> dict:
  return {"scale": np.asarray(get(name))}


def _encoder_layer(get, i, c) -> dict:
  p = f"encoder.block.{i}.layer."
  return {
      "pre_attention_layer_norm": _scale(get, p + "0.layer_norm.weight"),
      "attention": _attention(get, p + "0.SelfAttention.", c),
      "pre_mlp_layer_norm": _scale(get, p + "1.layer_norm.weight"),
      "mlp": _mlp(get, p + "1.DenseReluDense."),
  }


def _decoder_layer(get, i, c) -> dict:
  p = f"decoder.block.{i}.layer."
  return {
      "pre_self_attention_layer_norm": _scale(get, p + "0.layer_norm.weight"),
      "self_attention": _attention(get, p + "0.SelfAttention.", c),
      "pre_cross_attention_layer_norm": _scale(get, p + "1.layer_norm.weight"),
      "encoder_decoder_attention": _attention(get, p + "1.EncDecAttention.", c),
      "pre_mlp_layer_norm": _scale(get, p + "2.layer_norm.weight"),
      "mlp": _mlp(get, p + "2.DenseReluDense."),
  }


def _stack(layers, scan: bool) -> dict:
  """Unrolled ``layers_i`` entries, or one ``layers`` entry stacked on axis 0 (``scan``)."""
  if not scan:
    return {f"layers_{i}": layer for i, layer in enumerate(layers)}
  return {"layers": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)}


def _check_shapes(params: dict, c: T5Config) -> None:
  """Compare with the abstract ``T5EncoderDecoder(c).init`` tree, naming every mismatching key."""
  tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  abstract = jax.eval_shape(lambda r, e, d: T5EncoderDecoder(c).init(r, e, d),
                            jax.random.PRNGKey(0), tokens, tokens)
  shape_check.check_fits(params, abstract["params"], "HF T5")


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: T5Config) -> dict:
  """palix params (nested dict of numpy arrays in ``config.param_dtype``) from HF T5 weights.

  Every key of ``state_dict`` must be used (the ``embed_tokens`` aliases of ``shared`` excepted);
  missing keys, unused keys and shape mismatches raise ``ValueError`` naming them.
  """
  c = config.validate()
  sd = dict(state_dict)
  if "shared.weight" not in sd and _EMBEDDING_ALIASES[0] in sd:
    sd["shared.weight"] = sd[_EMBEDDING_ALIASES[0]]
  for alias in _EMBEDDING_ALIASES:
    sd.pop(alias, None)
  used = set()

  def get(name):
    if name not in sd:
      raise ValueError(f"HF T5 state dict lacks {name!r} (config: {c.num_encoder_layers} encoder "
                       f"and {c.num_decoder_layers} decoder layers)")
    used.add(name)
    return sd[name]

  encoder = _stack([_encoder_layer(get, i, c) for i in range(c.num_encoder_layers)], c.scan)
  encoder["relpos_bias"] = {"rel_embedding": np.asarray(
      get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))}
  encoder["encoder_norm"] = _scale(get, "encoder.final_layer_norm.weight")
  decoder = _stack([_decoder_layer(get, i, c) for i in range(c.num_decoder_layers)], c.scan)
  decoder["relpos_bias"] = {"rel_embedding": np.asarray(
      get("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))}
  decoder["decoder_norm"] = _scale(get, "decoder.final_layer_norm.weight")
  shared = np.asarray(get("shared.weight"))
  params = {"token_embedder": {"embedding": shared}, "encoder": encoder, "decoder": decoder}
  if c.logits_via_embedding:
    if "lm_head.weight" in sd:
      used.add("lm_head.weight")
      if not np.array_equal(np.asarray(sd["lm_head.weight"]), shared):
        raise ValueError("HF T5: the config ties the output logits to the embedding (original T5 "
                         "scaling) but lm_head.weight differs from shared.weight")
  else:
    lm_head = sd.get("lm_head.weight", shared)
    used.add("lm_head.weight")
    params["logits_dense"] = {"kernel": _transposed(lm_head)}
  unused = sorted(set(sd) - used)
  if unused:
    raise ValueError(f"HF T5 state dict has {len(unused)} keys with no palix counterpart "
                     f"(e.g. a deeper model than the config says): {', '.join(unused[:8])}"
                     f"{' ...' if len(unused) > 8 else ''}")
  dtype = c.params_dtype
  params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), params)
  _check_shapes(params, c)
  return params


def read_hf_weights(folder: Union[str, pathlib.Path]) -> Dict[str, np.ndarray]:
  """All tensors of an HF folder: ``model.safetensors`` or the shards of its index."""
  folder = pathlib.Path(folder)
  index = folder / "model.safetensors.index.json"
  if (folder / "model.safetensors").exists():
    return read_safetensors(folder / "model.safetensors")
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
    state_dict = {}
    for shard in sorted(set(weight_map.values())):
      if not (folder / shard).exists():
        raise FileNotFoundError(f"{folder / shard} (listed in {index.name}) does not exist")
      state_dict.update(read_safetensors(folder / shard))
    return state_dict
  pickled = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt")
                   for p in folder.glob(pattern))
  if pickled:
    raise ValueError(f"{folder} has only pickled weights ({', '.join(pickled)}); palix never "
                     "unpickles (it can run code). Re-save them as safetensors with "
                     "model.save_pretrained(folder, safe_serialization=True)")
  raise FileNotFoundError(f"{folder} has no model.safetensors or model.safetensors.index.json")


def read_hf_config(folder: Union[str, pathlib.Path]) -> Dict[str, Any]:
  """The parsed ``config.json`` of an HF folder, with clear errors for a missing or bad file."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"HF model folder {folder} does not exist")
  path = folder / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found (an HF model folder has config.json)")
  try:
    cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
  return cfg


def load_hf_t5(folder: Union[str, pathlib.Path], **overrides) -> Tuple[T5Config, dict]:
  """``(T5Config, params)`` from an HF T5 folder (``config.json`` + safetensors weights)."""
  config = t5_config_from_hf(read_hf_config(folder), **overrides)
  return config, params_from_hf_state_dict(read_hf_weights(folder), config)
