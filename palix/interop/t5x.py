"""Import T5X checkpoints (T5.1.1 / UL2 encoder-decoders) into palix's T5.

Both of T5X's checkpoint formats are read, with their own libraries (no T5X needed):

* **legacy** (``t5x.checkpoints.Checkpointer``): ``checkpoint_<step>/checkpoint`` is a msgpack
  file (``flax.serialization``) of ``{'version': 3, 'optimizer': {'target': params, 'state':
  ...}}`` in which every partitioned array is replaced by the JSON spec of a TensorStore zarr
  array stored next to it (``checkpoint_<step>/target.encoder.layers_0.attention.query.kernel/``,
  its path relative to the step folder); small arrays are inline;
* **Orbax** (``t5x.checkpoints.OrbaxCheckpointManagerInterface``): ``checkpoint_<step>/state/``
  is an Orbax PyTree checkpoint of ``{'target': params, 'state': ...}``.

Only ``target`` (the parameters) is read; the optimizer state is left on disk. ``path`` may be the
model folder (the newest ``checkpoint_<step>``, or ``step``), a step folder, its ``checkpoint``
file or its ``state`` folder.

Parameter names (``target/`` removed). T5X's layout (``t5x/examples/t5/network.py``, and
flaxformer's T5.1.1 that the public T5X checkpoints use) is palix's, except for three arrays:

=====================================================  ============================================
T5X                                                    palix ``T5EncoderDecoder``
=====================================================  ============================================
``token_embedder/embedding`` ``[V, D]``                ``token_embedder/embedding``
``encoder/relpos_bias/rel_embedding`` ``[H, B]``       ``encoder/relpos_bias/rel_embedding``
                                                       ``[B, H]`` (transposed)
``encoder/layers_{i}/pre_attention_layer_norm/scale``  the same name
``encoder/layers_{i}/attention/{query,key,value}/``    ``.../kernel`` ``[D, H, Dh]`` (T5X stores
``kernel`` ``[D, H*Dh]``                               the heads joined; ``[D, H, Dh]`` also read)
``encoder/layers_{i}/attention/out/kernel``            ``.../out/kernel`` ``[H, Dh, D]``
``[H*Dh, D]``
``encoder/layers_{i}/pre_mlp_layer_norm/scale``,       the same names (gated MLP: ``wi_0`` is the
``mlp/wi_0``, ``mlp/wi_1``, ``mlp/wo`` ``/kernel``     activated branch)
``encoder/encoder_norm/scale``                         the same name
``decoder/relpos_bias/rel_embedding`` ``[H, B]``       ``decoder/relpos_bias/rel_embedding``
                                                       (transposed)
``decoder/layers_{i}/{pre_self_attention_layer_norm,   the same names (attention kernels as
self_attention, pre_cross_attention_layer_norm,        above)
encoder_decoder_attention, pre_mlp_layer_norm, mlp}``
``decoder/decoder_norm/scale``                         the same name
``decoder/logits_dense/kernel`` ``[D, V]``             ``logits_dense/kernel`` (absent: logits via
                                                       the embedding, ``logits_via_embedding``)
=====================================================  ============================================

Scanned checkpoints (``t5x/examples/scalable_t5``, flaxformer with ``scan_layers``) store one
``encoder/layers/...`` entry per parameter with the layers on axis ``scan_axis`` (T5X's
``param_scan_axis``, default 1). scalable_t5 gives every layer its own relative-position table
(``layers/relative_posemb/rel_embedding``, ``[H, L, B]``); palix's T5 shares one per stack, as
T5.1.1 does, so such tables are read only when all layers hold the same values.

What the file cannot say is passed in: the gated MLP's ``activation`` (``'gelu'``: T5.1.1,
``'silu'``: UL2), ``relative_attention_max_distance`` (128) and the layer-norm epsilon (1e-6).
Every other size is read off the arrays; arrays in bfloat16 are read as such and cast to
``param_dtype``.
"""

import json
import pathlib
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax import traverse_util

from palix.interop import param_mapping
from palix.interop.param_mapping import Rule, source
from palix.models.t5 import T5EncoderDecoder
from palix.models.t5_config import ACTIVATIONS, T5Config
from palix.training import checkpoints

LEGACY, ORBAX = "legacy", "orbax"
ALLOWED_OVERRIDES = ("scan", "remat", "remat_policy", "dtype", "param_dtype", "attention_impl",
                     "dropout_rate")
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_ATTENTION = ("attention", "self_attention", "encoder_decoder_attention")
_STACKS = {"encoder": "encoder_norm", "decoder": "decoder_norm"}


# --- finding and reading a checkpoint ----------------------------------------------------------

def find_checkpoint(path: Union[str, pathlib.Path], step: Optional[int] = None
                    ) -> Tuple[str, pathlib.Path]:
  """``(LEGACY, step folder)`` or ``(ORBAX, state folder)`` for any accepted ``path``."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"T5X checkpoint {path} does not exist")
  if path.is_file():
    if path.name != "checkpoint":
      raise ValueError(f"{path}: a T5X checkpoint file is named 'checkpoint' (the msgpack file of "
                       "a checkpoint_<step> folder)")
    return LEGACY, path.parent
  if path.name == "state" and _is_orbax_item(path):
    return ORBAX, path
  if (path / "state").is_dir() and _is_orbax_item(path / "state"):
    return ORBAX, path / "state"
  if (path / "checkpoint").is_file():
    return LEGACY, path
  steps = {int(m.group(1)): p for p in path.iterdir() for m in [_STEP_DIR.match(p.name)]
           if m and p.is_dir()}
  if not steps:
    raise ValueError(f"{path} is not a T5X checkpoint: no checkpoint_<step> folders, no "
                     "'checkpoint' file (legacy format) and no 'state' folder (Orbax format)")
  if step is None:
    step = max(steps)
  if step not in steps:
    raise ValueError(f"{path} has no checkpoint_{step} (steps: {sorted(steps)})")
  return find_checkpoint(steps[step])


def _is_orbax_item(path: pathlib.Path) -> bool:
  names = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")
  return any((path / name).exists() for name in names)


def _is_tensorstore_spec(value) -> bool:
  return isinstance(value, Mapping) and "driver" in value and "kvstore" in value


def _json_ready(value):
  """TensorStore wants JSON. flax's msgpack state dicts store a tuple (a spec's ``shape``) as
  ``{'0': .., '1': ..}`` and a numpy array (``chunks``) as an array: both become lists."""
  if isinstance(value, Mapping) and value and all(k == str(i) for i, k in enumerate(value)):
    return [_json_ready(value[str(i)]) for i in range(len(value))]
  if isinstance(value, Mapping):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  return value


def _read_tensorstore(spec: Mapping[str, Any], step_dir: pathlib.Path, name: str) -> np.ndarray:
  import tensorstore as ts  # pylint: disable=g-import-not-at-top  # only the legacy format needs it
  spec = _json_ready(spec)
  kvstore = dict(spec.get("kvstore") or {})
  relative = kvstore.get("path", spec.pop("path", None))
  if relative is None:
    raise ValueError(f"{step_dir}: the TensorStore spec of {name!r} has no path: "
                     f"{json.dumps(spec)}")
  # T5X writes paths relative to the step folder (and a dummy bucket for gs://); read them here.
  spec["kvstore"] = {"driver": "file", "path": str(step_dir / relative)}
  metadata = dict(spec.get("metadata") or {})
  for key in ("chunks", "compressor"):  # as T5X: open arrays written with other chunkings
    metadata.pop(key, None)
  spec["metadata"] = metadata
  if spec.get("dtype") == "uint16" or metadata.get("dtype") == "<u2":
    raise ValueError(f"{step_dir}: {name!r} is stored as uint16 (T5X checkpoint version 2 "
                     "bfloat16); T5X itself no longer reads these: re-save it with a current T5X")
  if not (step_dir / relative).is_dir():
    raise ValueError(f"{step_dir}: the TensorStore folder {relative!r} of {name!r} is missing")
  try:
    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())
  except (ValueError, RuntimeError) as e:
    raise ValueError(f"{step_dir}: cannot read {name!r} from {relative!r}: {e}") from None


def read_legacy(step_dir: Union[str, pathlib.Path]) -> Dict[str, np.ndarray]:
  """``{'encoder/layers_0/attention/query/kernel': array, ...}``: the ``target`` of a legacy step
  folder (msgpack + TensorStore)."""
  step_dir = pathlib.Path(step_dir)
  raw = (step_dir / "checkpoint").read_bytes()
  if raw.startswith(b"model_checkpoint_path"):
    raise ValueError(f"{step_dir / 'checkpoint'}: a TensorFlow checkpoint index (Mesh TensorFlow "
                     "T5), not a T5X checkpoint")
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:  # pylint: disable=broad-except  # msgpack raises several kinds
    raise ValueError(f"{step_dir / 'checkpoint'}: not a msgpack T5X checkpoint ({e})") from None
  if not isinstance(contents, Mapping):
    raise ValueError(f"{step_dir / 'checkpoint'}: holds a {type(contents).__name__}, not a dict")
  version = contents.get("version", 0)
  state = contents.get("optimizer", {}) if version else contents
  if not isinstance(state, Mapping) or "target" not in state:
    raise ValueError(f"{step_dir / 'checkpoint'}: no optimizer target (version {version}; top "
                     f"level: {sorted(contents)})")
  flat = traverse_util.flatten_dict(state["target"], sep="/",
                                    is_leaf=lambda _, value: _is_tensorstore_spec(value))
  arrays = {}
  for name, value in flat.items():
    if _is_tensorstore_spec(value):
      arrays[name] = _read_tensorstore(value, step_dir, name)
    elif isinstance(value, (np.ndarray, np.generic, int, float)):
      arrays[name] = np.asarray(value)
    else:
      raise ValueError(f"{step_dir / 'checkpoint'}: target/{name} is a "
                       f"{type(value).__name__}, neither an array nor a TensorStore spec")
  return arrays


def read_orbax(state_dir: Union[str, pathlib.Path]) -> Dict[str, np.ndarray]:
  """The ``target`` of an Orbax-format step (``checkpoint_<step>/state``), read as numpy."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state_dir = pathlib.Path(state_dir).absolute()
  tree = checkpoints.stored_tree(state_dir)
  if not isinstance(tree, Mapping) or "target" not in tree:
    top = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise ValueError(f"{state_dir}: an Orbax checkpoint without 'target' (top level: {top}); "
                     "T5X saves {'target': params, 'state': ...}")
  item = {"target": tree["target"]}  # only the parameters are read, not the optimizer state
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(restored["target"], sep="/").items()}


def read_t5x(path: Union[str, pathlib.Path], step: Optional[int] = None
             ) -> Tuple[Dict[str, np.ndarray], str]:
  """``(target arrays by T5X name, a description of what was read)``."""
  kind, folder = find_checkpoint(path, step)
  arrays = read_legacy(folder) if kind == LEGACY else read_orbax(folder)
  return arrays, f"T5X {kind} checkpoint {folder}"


# --- T5X names -> palix -------------------------------------------------------------------------

def _scanned(arrays) -> bool:
  return any(n.startswith("encoder/layers/") for n in arrays)


def _num_layers(arrays, stack: str, scanned: bool, scan_axis: int, width: int) -> int:
  if scanned:
    name = f"{stack}/layers/pre_mlp_layer_norm/scale"
    if name not in arrays or arrays[name].ndim != 2:
      raise ValueError(f"missing {name!r} (a scanned [layers, width] array), needed to count the "
                       f"{stack} layers")
    return int(arrays[name].shape[scan_axis])
  indices = sorted({int(m.group(1)) for n in arrays
                    for m in [re.match(rf"^{stack}/layers_(\d+)/", n)] if m})
  if not indices:
    raise ValueError(f"no {stack} layers ({stack}/layers_0/... or {stack}/layers/...): not a T5X "
                     "encoder-decoder")
  if indices != list(range(len(indices))):
    missing = sorted(set(range(indices[-1] + 1)) - set(indices))
    raise ValueError(f"{stack} layers {missing} are missing (found {stack}/layers_<i> for i in "
                     f"{indices})")
  del width
  return len(indices)


def _layer_array(arrays, name: str, scanned: bool, scan_axis: int) -> np.ndarray:
  """Layer 0's copy of ``encoder/layers_0/<name>`` (or of the scanned array)."""
  full = f"encoder/layers/{name}" if scanned else f"encoder/layers_0/{name}"
  if full not in arrays:
    raise ValueError(f"missing {full!r}, needed to size the model")
  return np.take(arrays[full], 0, axis=scan_axis) if scanned else arrays[full]


def _relpos_table(arrays, stack: str, scanned: bool, scan_axis: int) -> np.ndarray:
  shared = f"{stack}/relpos_bias/rel_embedding"
  if shared in arrays:
    return arrays[shared]
  per_layer = (f"{stack}/layers/relative_posemb/rel_embedding" if scanned
               else f"{stack}/layers_0/relative_posemb/rel_embedding")
  if per_layer not in arrays:
    raise ValueError(f"missing {shared!r} (the {stack}'s relative position table [heads, "
                     "buckets])")
  return np.take(arrays[per_layer], 0, axis=scan_axis) if scanned else arrays[per_layer]


def t5_config_from_t5x(arrays: Mapping[str, np.ndarray], *, activation: str = "gelu",
                       relative_attention_max_distance: int = 128, layer_norm_eps: float = 1e-6,
                       scan_axis: int = 1, **overrides) -> T5Config:
  """The ``T5Config`` of a T5X target's arrays (see the module docstring).

  ``activation`` is a ``t5.*`` gin constant name: ``'gelu'`` (T5.1.1) or ``'silu'`` (UL2).
  ``overrides``: ``ALLOWED_OVERRIDES`` (``scan``, dtypes, ...).
  """
  unknown = sorted(set(overrides) - set(ALLOWED_OVERRIDES))
  if unknown:
    raise ValueError(f"overrides {unknown} would change the model; allowed: "
                     f"{', '.join(ALLOWED_OVERRIDES)}")
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)} (gated "
                     "MLP: 'gelu' for T5.1.1, 'silu' for UL2)")
  if "token_embedder/embedding" not in arrays:
    raise ValueError(f"no 'token_embedder/embedding': not a T5X encoder-decoder target (names: "
                     f"{sorted(arrays)[:6]})")
  scanned = _scanned(arrays)
  vocab, width = arrays["token_embedder/embedding"].shape
  if any(re.match(r"^encoder/layers(_0)?/mlp/wi/", n) for n in arrays):
    raise ValueError("the MLP has a single 'wi' (T5 1.0's ReLU MLP); palix's T5 has the gated "
                     "MLP of T5.1.1/UL2 (wi_0, wi_1)")
  table = _relpos_table(arrays, "encoder", scanned, scan_axis)
  if table.ndim != 2:
    raise ValueError(f"the encoder's relative position table has shape {table.shape}; expected "
                     "[heads, buckets]")
  heads, buckets = table.shape
  query = _layer_array(arrays, "attention/query/kernel", scanned, scan_axis)
  if query.shape[0] != width or np.prod(query.shape[1:]) % heads:
    raise ValueError(f"encoder layer 0's query kernel has shape {query.shape}; expected [{width}, "
                     f"{heads} * head_dim]")
  mlp = _layer_array(arrays, "mlp/wi_0/kernel", scanned, scan_axis)
  config = T5Config(
      vocab_size=int(vocab), emb_dim=int(width), num_heads=int(heads),
      head_dim=int(np.prod(query.shape[1:]) // heads), mlp_dim=int(mlp.shape[-1]),
      num_encoder_layers=_num_layers(arrays, "encoder", scanned, scan_axis, width),
      num_decoder_layers=_num_layers(arrays, "decoder", scanned, scan_axis, width),
      activation=ACTIVATIONS[activation],
      logits_via_embedding="decoder/logits_dense/kernel" not in arrays,
      relative_attention_num_buckets=int(buckets),
      relative_attention_max_distance=int(relative_attention_max_distance),
      layer_norm_eps=float(layer_norm_eps), **overrides)
  return config.validate()


def _t5x_layer_shapes(inner: str, shape, c: T5Config):
  """The shapes T5X may store one layer's ``inner`` parameter in (joined or split heads)."""
  module = inner.split("/")[0]
  if module in _ATTENTION and inner.endswith("/kernel"):
    joined = ((c.emb_dim, c.num_heads * c.head_dim) if not inner.endswith("out/kernel")
              else (c.num_heads * c.head_dim, c.emb_dim))
    return (joined, tuple(shape))
  return (tuple(shape),)


def _insert(shape, axis: int, size: int):
  shape = list(shape)
  shape.insert(axis, size)
  return tuple(shape)


def _same_tables(name: str):
  def convert(*tables):
    for i, t in enumerate(tables[1:], 1):
      if not np.array_equal(t, tables[0]):
        raise ValueError(f"{name}: layer {i}'s relative position table differs from layer 0's; "
                         "palix's T5 shares one table per stack (T5.1.1), so per-layer tables "
                         "(t5x/examples/scalable_t5) can only be read when they are equal")
    return tables[0].T
  return convert


def _rules(arrays, c: T5Config, shapes: Mapping[str, tuple], scan_axis: int):
  scanned_source = _scanned(arrays)
  rules = []
  for path, shape in shapes.items():
    stack = path.split("/")[0]
    layer = re.match(rf"^{stack}/layers(?:_(\d+))?/(.*)$", path)
    if path == "logits_dense/kernel":
      rules.append(Rule(path, (source("decoder/logits_dense/kernel", shape),), lambda a: a))
    elif path.endswith("relpos_bias/rel_embedding"):
      shared = f"{stack}/relpos_bias/rel_embedding"
      per_layer = (f"{stack}/layers/relative_posemb/rel_embedding" if scanned_source
                   else f"{stack}/layers_0/relative_posemb/rel_embedding")
      count = c.num_encoder_layers if stack == "encoder" else c.num_decoder_layers
      t5x_shape = tuple(shape[::-1])
      if shared in arrays or per_layer not in arrays:
        rules.append(Rule(path, (source(shared, t5x_shape),), lambda a: a.T))
      elif scanned_source:
        src = source(per_layer, _insert(t5x_shape, scan_axis, count))
        rules.append(Rule(path, (src,), lambda a: _same_tables(per_layer)(
            *np.moveaxis(a, scan_axis, 0))))
      else:
        srcs = tuple(source(f"{stack}/layers_{i}/relative_posemb/rel_embedding", t5x_shape)
                     for i in range(count))
        rules.append(Rule(path, srcs, _same_tables(f"{stack}/layers_<i>/relative_posemb")))
    elif layer:
      index, inner = layer.group(1), layer.group(2)
      index = None if index is None else int(index)
      per_layer = tuple(shape[1:]) if c.scan else tuple(shape)
      count = c.num_encoder_layers if stack == "encoder" else c.num_decoder_layers
      t5x_shapes = _t5x_layer_shapes(inner, per_layer, c)
      if scanned_source:
        src = param_mapping.Source(f"{stack}/layers/{inner}",
                                   tuple(_insert(s, scan_axis, count) for s in t5x_shapes))

        def convert(a, i=index, s=per_layer):
          layers = np.moveaxis(a, scan_axis, 0)
          if i is not None:
            return layers[i].reshape(s)
          return layers.reshape((layers.shape[0],) + s)
        rules.append(Rule(path, (src,), convert))
      elif index is None:  # palix scanned, T5X unrolled
        srcs = tuple(param_mapping.Source(f"{stack}/layers_{i}/{inner}", t5x_shapes)
                     for i in range(count))
        rules.append(Rule(path, srcs, lambda *xs, s=per_layer: np.stack([x.reshape(s)
                                                                          for x in xs])))
      else:
        src = param_mapping.Source(f"{stack}/layers_{index}/{inner}", t5x_shapes)
        rules.append(Rule(path, (src,), lambda a, s=per_layer: a.reshape(s)))
    else:  # token_embedder/embedding, encoder/encoder_norm/scale, decoder/decoder_norm/scale
      rules.append(Rule(path, (source(path, shape),), lambda a: a))
  return rules


def params_from_t5x(arrays: Mapping[str, np.ndarray], config: T5Config, *, scan_axis: int = 1,
                    what: str = "T5X checkpoint") -> dict:
  """palix ``T5EncoderDecoder`` params (numpy, ``config.param_dtype``) from a T5X target.

  Raises ``ValueError`` listing every missing, extra or mis-shaped array (T5X path, palix path,
  both shapes).
  """
  c = config.validate()
  tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  shapes = param_mapping.abstract_shapes(lambda r, e, d: T5EncoderDecoder(c).init(r, e, d),
                                         tokens, tokens)
  flat = param_mapping.apply_rules(arrays, _rules(arrays, c, shapes, scan_axis), what=what,
                                   target_shapes=shapes)
  dtype = c.params_dtype
  return traverse_util.unflatten_dict({k: v.astype(dtype) for k, v in flat.items()}, sep="/")


def load_t5x(path: Union[str, pathlib.Path], *, step: Optional[int] = None,
             activation: str = "gelu", relative_attention_max_distance: int = 128,
             layer_norm_eps: float = 1e-6, scan_axis: int = 1,
             **overrides) -> Tuple[T5Config, dict]:
  """``(T5Config, params)`` of a T5X checkpoint (either format; see the module docstring)."""
  arrays, what = read_t5x(path, step)
  config = t5_config_from_t5x(arrays, activation=activation, layer_norm_eps=layer_norm_eps,
                              relative_attention_max_distance=relative_attention_max_distance,
                              scan_axis=scan_axis, **overrides)
  return config, params_from_t5x(arrays, config, scan_axis=scan_axis, what=what)
