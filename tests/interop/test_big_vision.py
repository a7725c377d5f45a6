"""big_vision ``.npz`` import against a numpy re-implementation of big_vision's ViT forward (written
here from big_vision/models/vit.py: tanh GELU, flax LayerNorm eps 1e-6, posemb before the class
token, GAP/MAP pooling, Dual PatchNorm stem) and against Hugging Face's SiglipVisionModel.

Fixtures are written with ``np.savez`` in big_vision's layout (names flattened with ``/``)."""

import functools
import math

import jax
import numpy as np
import pytest

from palix.interop import big_vision
from palix.layers.patch import DualPatchNormEmbed
from palix.layers.pooling import GlobalAveragePool, MAPHead, NoPool
from palix.layers.position import LearnedPosEmb, SinCos2DPosEmb
from palix.models.classifier import ClassifierConfig, ImageClassifier
from palix.models.vit import ViT

from big_vision_files import CLASSES, DEPTH, HEADS, MLP, PATCH, SIZE, WIDTH, random_vit_arrays


# --- big_vision's forward in numpy (float64) ------------------------------------------------------

def _ln(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):  # flax's nn.gelu default (tanh approximation)
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _mha(q_in, kv_in, p):
  q = np.einsum("bld,dhk->blhk", q_in, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bld,dhk->blhk", kv_in, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bld,dhk->blhk", kv_in, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqs,bshk->bqhk", weights, v)
  return np.einsum("bqhk,hkd->bqd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _mlp(x, p):
  h = _gelu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def _patches(images, p):
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)  # pixels in (py, px, c) order


def _sincos(g, width):  # MoCo v3 2-D sin-cos, as big_vision's posemb_sincos_2d
  y, x = np.mgrid[:g, :g]
  omega = 1.0 / 10_000 ** (np.arange(width // 4) / (width // 4 - 1))
  y, x = y.reshape(-1)[:, None] * omega, x.reshape(-1)[:, None] * omega
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


def _tree(flat):
  root = {}
  for name, value in flat.items():
    node = root
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float64)
  return root


def bv_forward(flat, images, pool, posemb_table=None):
  """big_vision ``_Model`` on a file's arrays (one tower, no prefix): (pooled, encoded, logits).

  ``posemb_table``: the ``[g*g, D]`` table to use (default: the file's, or sin-cos)."""
  t = _tree(flat)
  patches = _patches(np.asarray(images, np.float64), PATCH)
  if "patchln_pre" in t:
    x = _ln(_ln(patches, t["patchln_pre"]) @ t["embedding"]["kernel"] + t["embedding"]["bias"],
            t["patchln_post"])
  else:
    kernel = t["embedding"]["kernel"].reshape(-1, t["embedding"]["kernel"].shape[-1])
    x = patches @ kernel + t["embedding"]["bias"]
  n = x.shape[1]
  if posemb_table is None:  # the old name (vision_transformer's files) first
    table = t["Transformer"].get("posembed_input", t).get("pos_embedding")
    posemb_table = table[0] if table is not None else _sincos(math.isqrt(n), WIDTH)
  if posemb_table.shape[0] == n + 1:  # an old file: [cls] first, then the table added to all
    x = np.concatenate([np.broadcast_to(t["cls"], (len(x), 1, WIDTH)), x], 1) + posemb_table
  else:
    x = x + posemb_table
    if "cls" in t:
      x = np.concatenate([np.broadcast_to(t["cls"], (len(x), 1, WIDTH)), x], 1)
  blocks = t["Transformer"]
  for i in range(DEPTH):
    b = (blocks[f"encoderblock_{i}"] if "encoderblock" not in blocks
         else jax.tree.map(lambda a, i=i: a[i], blocks["encoderblock"]))
    y = _ln(x, b["LayerNorm_0"])
    x = x + _mha(y, y, b["MultiHeadDotProductAttention_0"])
    x = x + _mlp(_ln(x, b["LayerNorm_1"]), b["MlpBlock_0"])
  encoded = _ln(x, blocks["encoder_norm"])
  if pool == "map":
    m = t["MAPHead_0"]
    probe = np.broadcast_to(m["probe"], (len(x), 1, WIDTH))
    y = _mha(probe, encoded, m["MultiHeadDotProductAttention_0"])
    pooled = (y + _mlp(_ln(y, m["LayerNorm_0"]), m["MlpBlock_0"]))[:, 0]
  elif pool == "gap":
    pooled = encoded.mean(1)
  else:
    pooled = encoded
  logits = pooled @ t["head"]["kernel"] + t["head"]["bias"] if "head" in t else None
  return pooled, encoded, logits


# --- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
  return np.random.RandomState(7).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _vit(config, params, images):
  pooled, out = ViT(config).apply({"params": params}, images)
  return pooled, out["encoded"]


def vit_outputs(imported, images):
  return [np.asarray(x) for x in _vit(imported.config, imported.params, images)]


def save(tmp_path, flat, name="vit.npz"):
  path = tmp_path / name
  np.savez(path, **flat)
  return path


CASES = {
    "conv_learned_gap_head": dict(stem="conv", posemb="learn", pool="gap", head=True),
    "dpn_sincos_map_scanned": dict(stem="dpn", posemb="sincos", pool="map", head=False,
                                   scanned=True),
    "old_cls_posemb_all_tokens": dict(stem="conv", posemb="learn", pool="none", head=False,
                                      cls=True, old_posemb=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_big_vision_forward(case, tmp_path, images):
  kw = CASES[case]
  flat = random_vit_arrays(1, **kw)
  # A sin-cos model has no table to size it: its resolution is an argument (default 224).
  size = SIZE if kw["posemb"] == "sincos" else None
  imported = big_vision.load_big_vision(save(tmp_path, flat), image_size=size)
  c = imported.config
  assert (c.width, c.depth, c.num_heads, c.mlp_dim, c.patch_size, c.image_size) == (
      WIDTH, DEPTH, HEADS, MLP, PATCH, SIZE)
  assert c.pool is {"gap": GlobalAveragePool, "map": MAPHead, "none": NoPool}[kw["pool"]]
  assert c.posemb is (LearnedPosEmb if kw["posemb"] == "learn" else SinCos2DPosEmb)
  assert (c.patch_embed is DualPatchNormEmbed) == (kw["stem"] == "dpn")
  assert c.class_token == kw.get("cls", False)
  pooled, encoded, logits = bv_forward(flat, images, kw["pool"])
  got_pooled, got_encoded = vit_outputs(imported, images)
  np.testing.assert_allclose(got_encoded, encoded, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got_pooled, pooled, atol=1e-4, rtol=1e-4)
  if kw["head"]:
    classifier = ImageClassifier(ClassifierConfig(vit=c, num_classes=CLASSES))
    got = classifier.apply({"params": {"vit": imported.params, "head": imported.head}}, images)
    np.testing.assert_allclose(np.asarray(got), logits, atol=1e-4, rtol=1e-4)
  else:
    assert imported.head is None


def test_scanned_palix_layout_equals_unrolled(tmp_path, images):
  flat = random_vit_arrays(2, pool="map", head=False)
  unrolled = big_vision.import_arrays(flat)
  scanned = big_vision.import_arrays(flat, scan=True)
  assert scanned.params["Transformer"]["blocks"]["block"]["norm1"]["scale"].shape == (DEPTH, WIDTH)
  for a, b in zip(vit_outputs(unrolled, images), vit_outputs(scanned, images)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_siglip_two_tower_file(images):
  """params/img/... next to a text tower and the logit scale and bias: only img/ is read."""
  tower = random_vit_arrays(3, pool="map", head=True)
  flat = {f"params/img/{k}": v for k, v in tower.items()}
  flat.update({"params/txt/Encoder_0/kernel": np.zeros((3, 3), np.float32),
               "params/t": np.zeros((1,), np.float32), "params/b": np.zeros((1,), np.float32),
               "opt/state": np.zeros((2,), np.float32)})
  imported = big_vision.import_arrays(flat)
  assert imported.num_classes == CLASSES
  pooled, encoded, _ = bv_forward(tower, images, "map")
  got_pooled, got_encoded = vit_outputs(imported, images)
  np.testing.assert_allclose(got_encoded, encoded, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got_pooled, pooled, atol=1e-4, rtol=1e-4)


def _zoom_reference(table, new):
  """Corner-aligned bilinear resize written out: output cell i sits at i * (g-1) / (new-1)."""
  g = math.isqrt(len(table))
  grid = table.reshape(g, g, -1).astype(np.float64)
  out = np.zeros((new, new, grid.shape[-1]))
  for i in range(new):
    for j in range(new):
      y, x = i * (g - 1) / (new - 1), j * (g - 1) / (new - 1)
      y0, x0 = min(int(y), g - 2), min(int(x), g - 2)
      dy, dx = y - y0, x - x0
      out[i, j] = ((1 - dy) * (1 - dx) * grid[y0, x0] + (1 - dy) * dx * grid[y0, x0 + 1]
                   + dy * (1 - dx) * grid[y0 + 1, x0] + dy * dx * grid[y0 + 1, x0 + 1])
  return out.reshape(new * new, -1)


def test_posemb_resized_to_a_new_resolution(images):
  flat = random_vit_arrays(4, pool="gap", head=False)
  new_size = 2 * SIZE - PATCH  # a 7x7 grid from the stored 4x4
  imported = big_vision.import_arrays(flat, image_size=new_size)
  table = imported.params["posemb"]["pos_embedding"]
  expected = _zoom_reference(flat["pos_embedding"][0], new_size // PATCH)
  np.testing.assert_allclose(table, expected, atol=1e-5)
  big = np.random.RandomState(8).uniform(-1, 1, (2, new_size, new_size, 3)).astype(np.float32)
  pooled, _, _ = bv_forward(flat, big, "gap", posemb_table=expected)
  np.testing.assert_allclose(vit_outputs(imported, big)[0], pooled, atol=1e-4, rtol=1e-4)


def test_against_hf_siglip_vision_tower(images):
  """HF's SiglipVisionModel (an independent implementation) with the same weights, written in
  big_vision's layout: pooled output = HF's pooler_output, encoded = last_hidden_state."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
      image_size=SIZE, patch_size=PATCH)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():  # move norms away from their (1, 0) init
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  hd = WIDTH // HEADS

  def attention(q, k, v, o_w, o_b, qb, kb, vb):
    split = lambda m: m.T.reshape(WIDTH, HEADS, hd)  # noqa: E731  torch [out, in] -> [in, H, hd]
    return {"query": {"kernel": split(q), "bias": qb.reshape(HEADS, hd)},
            "key": {"kernel": split(k), "bias": kb.reshape(HEADS, hd)},
            "value": {"kernel": split(v), "bias": vb.reshape(HEADS, hd)},
            "out": {"kernel": o_w.T.reshape(HEADS, hd, WIDTH), "bias": o_b}}

  def mlp(prefix):
    return {"Dense_0": {"kernel": sd[prefix + "fc1.weight"].T, "bias": sd[prefix + "fc1.bias"]},
            "Dense_1": {"kernel": sd[prefix + "fc2.weight"].T, "bias": sd[prefix + "fc2.bias"]}}

  def norm(prefix):
    return {"scale": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"]}

  tree = {"embedding": {"kernel": sd["embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
                        "bias": sd["embeddings.patch_embedding.bias"]},
          "pos_embedding": sd["embeddings.position_embedding.weight"][None],
          "Transformer": {"encoder_norm": norm("post_layernorm")}}
  for i in range(DEPTH):
    p = f"encoder.layers.{i}."
    a = p + "self_attn."
    tree["Transformer"][f"encoderblock_{i}"] = {
        "LayerNorm_0": norm(p + "layer_norm1"), "LayerNorm_1": norm(p + "layer_norm2"),
        "MultiHeadDotProductAttention_0": attention(
            sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"],
            sd[a + "out_proj.weight"], sd[a + "out_proj.bias"], sd[a + "q_proj.bias"],
            sd[a + "k_proj.bias"], sd[a + "v_proj.bias"]),
        "MlpBlock_0": mlp(p + "mlp.")}
  qkv_w = np.split(sd["head.attention.in_proj_weight"], 3)
  qkv_b = np.split(sd["head.attention.in_proj_bias"], 3)
  tree["MAPHead_0"] = {"probe": sd["head.probe"], "LayerNorm_0": norm("head.layernorm"),
                       "MultiHeadDotProductAttention_0": attention(
                           *qkv_w, sd["head.attention.out_proj.weight"],
                           sd["head.attention.out_proj.bias"], *qkv_b),
                       "MlpBlock_0": mlp("head.mlp.")}
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = {f"params/img/{k}": v for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
  imported = big_vision.import_arrays(flat)
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  got_pooled, got_encoded = vit_outputs(imported, images)
  np.testing.assert_allclose(got_encoded, out.last_hidden_state.numpy(), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got_pooled, out.pooler_output.numpy(), atol=1e-4, rtol=1e-4)


# --- bad files ------------------------------------------------------------------------------------

def test_missing_extra_and_misshaped_arrays_are_named(tmp_path):
  flat = random_vit_arrays(5)
  missing = {k: v for k, v in flat.items() if k != "Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"}
  with pytest.raises(ValueError, match=r"missing 'Transformer/encoderblock_1/MlpBlock_0/Dense_1/"
                                       r"bias' \(shape \(32,\), for palix "
                                       r"Transformer/block01/mlp/wo/bias\)"):
    big_vision.load_big_vision(save(tmp_path, missing))
  extra = dict(flat, **{"Transformer/encoderblock_0/LayerNorm_2/scale": np.ones(WIDTH, np.float32)})
  with pytest.raises(ValueError, match=r"extra 'Transformer/encoderblock_0/LayerNorm_2/scale' "
                                       r"\(shape \(32,\)\)"):
    big_vision.import_arrays(extra)
  wrong = dict(flat, **{"Transformer/encoderblock_1/LayerNorm_1/bias": np.ones(31, np.float32)})
  with pytest.raises(ValueError, match=r"'Transformer/encoderblock_1/LayerNorm_1/bias' has shape "
                                       r"\(31,\); palix Transformer/block01/norm2/bias needs "
                                       r"\(32,\)"):
    big_vision.import_arrays(wrong)


def test_unsupported_and_unreadable_files(tmp_path):
  flat = random_vit_arrays(6)
  with pytest.raises(ValueError, match="pre_logits"):
    big_vision.import_arrays(dict(flat, **{"pre_logits/kernel": np.ones((WIDTH, WIDTH))}))
  with pytest.raises(ValueError, match="pool 'map' but the file has no MAP head"):
    big_vision.import_arrays(flat, pool="map")
  with pytest.raises(ValueError, match="head but the pool is 'none'"):
    big_vision.import_arrays(flat, pool="none")
  assert big_vision.import_arrays(flat, pool="none", drop_head=True).head is None
  pickled = tmp_path / "objects.npz"
  np.savez(pickled, a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(ValueError, match="pickled object arrays"):
    big_vision.load_big_vision(pickled)
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(ValueError, match="not an .npz file"):
    big_vision.load_big_vision(tmp_path / "text.npz")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    big_vision.load_big_vision(tmp_path / "nowhere.npz")
  with pytest.raises(ValueError, match="overrides \\['width'\\] would change the model"):
    big_vision.import_arrays(flat, width=64)
