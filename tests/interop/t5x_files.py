"""T5X checkpoints of Hugging Face T5 weights, written in T5X's layout by the formats' own
libraries (shared by the T5X importer and CLI tests).

The layout follows t5x/examples/t5/network.py and layers.py: joined-head attention kernels
``[D, H*Dh]``, ``rel_embedding`` ``[H, B]``, ``decoder/logits_dense``, and for scanned checkpoints
the layers stacked on ``param_scan_axis``. Legacy files are what t5x.checkpoints.Checkpointer
writes (flax msgpack + TensorStore zarr folders), Orbax ones what its Orbax manager writes."""

import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import serialization
from flax import traverse_util

# A tiny T5.1.1 (HF T5Config arguments).
TINY = dict(vocab_size=96, d_model=32, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            d_kv=8, dropout_rate=0.0, relative_attention_num_buckets=16,
            relative_attention_max_distance=20)


def t5x_target(sd, *, scan_axis=None, split_heads=False):
  """The T5X ``target`` tree of HF T5 weights (``scan_axis``: stack the layers there)."""
  h, dh, d = TINY["num_heads"], TINY["d_kv"], TINY["d_model"]

  def attention(prefix):
    def kernel(name):  # torch Linear [out, in] -> T5X DenseGeneral [in, out] (heads joined)
      k = sd[f"{prefix}{name}.weight"].T
      if split_heads:
        k = k.reshape(d, h, dh) if name != "o" else k.reshape(h, dh, d)
      return {"kernel": k}
    return {"query": kernel("q"), "key": kernel("k"), "value": kernel("v"), "out": kernel("o")}

  def mlp(prefix):
    return {n: {"kernel": sd[f"{prefix}{n}.weight"].T} for n in ("wi_0", "wi_1", "wo")}

  def scale(name):
    return {"scale": sd[name]}

  target = {"token_embedder": {"embedding": sd["shared.weight"]}}
  for stack, count in (("encoder", TINY["num_layers"]), ("decoder", TINY["num_decoder_layers"])):
    layers = []
    for i in range(count):
      p = f"{stack}.block.{i}.layer."
      if stack == "encoder":
        layers.append({"pre_attention_layer_norm": scale(p + "0.layer_norm.weight"),
                       "attention": attention(p + "0.SelfAttention."),
                       "pre_mlp_layer_norm": scale(p + "1.layer_norm.weight"),
                       "mlp": mlp(p + "1.DenseReluDense.")})
      else:
        layers.append({"pre_self_attention_layer_norm": scale(p + "0.layer_norm.weight"),
                       "self_attention": attention(p + "0.SelfAttention."),
                       "pre_cross_attention_layer_norm": scale(p + "1.layer_norm.weight"),
                       "encoder_decoder_attention": attention(p + "1.EncDecAttention."),
                       "pre_mlp_layer_norm": scale(p + "2.layer_norm.weight"),
                       "mlp": mlp(p + "2.DenseReluDense.")})
    tree = {"relpos_bias": {"rel_embedding": sd[
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T},
            f"{stack}_norm": scale(f"{stack}.final_layer_norm.weight")}
    if scan_axis is None:
      tree.update({f"layers_{i}": layer for i, layer in enumerate(layers)})
    else:
      tree["layers"] = jax.tree.map(lambda *xs: np.stack(xs, axis=scan_axis), *layers)
    target[stack] = tree
  target["decoder"]["logits_dense"] = {"kernel": sd["lm_head.weight"].T}
  return target


def write_legacy(step_dir, target, *, dtype=np.float32, inline=(".*_norm/scale",)):
  """A legacy T5X step folder, as t5x.checkpoints.Checkpointer writes it: every array in its own
  TensorStore zarr folder ``target.<dotted name>`` (gzip), referenced by its spec in the msgpack
  ``checkpoint`` file; arrays matching ``inline`` are stored in the msgpack file itself."""
  step_dir.mkdir(parents=True)
  flat = {}
  for name, value in traverse_util.flatten_dict(target, sep="/").items():
    value = np.asarray(value).astype(dtype)
    if any(re.fullmatch(p, name) for p in inline):
      flat[name] = value
      continue
    relative = "target." + name.replace("/", ".")
    spec = {"driver": "zarr", "dtype": np.dtype(dtype).name,
            "kvstore": {"driver": "file", "path": relative},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(value.shape),
                         "chunks": np.array(value.shape)}}
    absolute = dict(spec, kvstore={"driver": "file", "path": str(step_dir / relative)},
                    metadata=dict(spec["metadata"], chunks=list(value.shape)))
    ts.open(absolute, create=True, open=True).result().write(value).result()
    flat[name] = spec
  state = {"step": np.int32(7), "param_states": {"encoder": {"v": np.zeros(3, np.float32)}}}
  contents = {"version": 3, "optimizer": {"target": traverse_util.unflatten_dict(flat, sep="/"),
                                          "state": state}}
  (step_dir / "checkpoint").write_bytes(serialization.to_bytes(contents))


def write_orbax(model_dir, target, step=7):
  """An Orbax-format T5X checkpoint: ``checkpoint_<step>/state`` holding
  ``{'target': params, 'state': optimizer state}`` (Orbax's CheckpointManager with T5X's
  ``step_prefix='checkpoint'``)."""
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True)
  with ocp.CheckpointManager(str(model_dir), options=options) as manager:
    state = {"target": target, "state": {"step": np.int32(step),
                                         "param_states": {"v": np.zeros(3, np.float32)}}}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    manager.wait_until_finished()


def random_hf_weights(seed: int = 0):
  """Random weights of the TINY T5.1.1 under Hugging Face's names (numpy; no torch needed)."""
  rng = np.random.RandomState(seed)
  d, ff, heads, buckets = TINY["d_model"], TINY["d_ff"], TINY["num_heads"], TINY[
      "relative_attention_num_buckets"]
  shapes = {"shared.weight": (TINY["vocab_size"], d), "lm_head.weight": (TINY["vocab_size"], d)}
  for stack, count in (("encoder", TINY["num_layers"]), ("decoder", TINY["num_decoder_layers"])):
    shapes[f"{stack}.final_layer_norm.weight"] = (d,)
    shapes[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (buckets,
                                                                                       heads)
    for i in range(count):
      attention = ["0.SelfAttention"] + (["1.EncDecAttention"] if stack == "decoder" else [])
      for a in attention:
        for n in "qkvo":
          shapes[f"{stack}.block.{i}.layer.{a}.{n}.weight"] = (d, d)
      for j in range(len(attention) + 1):
        shapes[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"] = (d,)
      mlp = f"{stack}.block.{i}.layer.{len(attention)}.DenseReluDense."
      shapes.update({mlp + "wi_0.weight": (ff, d), mlp + "wi_1.weight": (ff, d),
                     mlp + "wo.weight": (d, ff)})
  return {k: rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
