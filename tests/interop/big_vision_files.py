"""A random big_vision ViT in its ``.npz`` layout (names as big_vision/models/vit.py writes them),
shared by the big_vision importer and CLI tests."""

import jax
import numpy as np

WIDTH, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 32, 2, 4, 48, 4, 16, 5
GRID = SIZE // PATCH


def random_vit_arrays(seed, *, stem="conv", posemb="learn", pool="gap", head=True, scanned=False,
                      cls=False, old_posemb=False):
  """A random big_vision ViT in its file layout (every array away from its init value)."""
  rng = np.random.RandomState(seed)

  def w(*shape, scale=0.3):
    return (scale * rng.randn(*shape)).astype(np.float32)

  def ln():
    return {"scale": 1 + w(WIDTH, scale=0.2), "bias": w(WIDTH, scale=0.1)}

  def mha():
    return {**{n: {"kernel": w(WIDTH, HEADS, WIDTH // HEADS), "bias": w(HEADS, WIDTH // HEADS)}
               for n in ("query", "key", "value")},
            "out": {"kernel": w(HEADS, WIDTH // HEADS, WIDTH), "bias": w(WIDTH)}}

  def mlp():
    return {"Dense_0": {"kernel": w(WIDTH, MLP), "bias": w(MLP)},
            "Dense_1": {"kernel": w(MLP, WIDTH), "bias": w(WIDTH)}}

  flat = {}

  def put(prefix, tree):
    for k, v in tree.items():
      if isinstance(v, dict):
        put(f"{prefix}{k}/", v)
      else:
        flat[prefix + k] = v

  k = PATCH * PATCH * 3
  if stem == "conv":
    put("", {"embedding": {"kernel": w(PATCH, PATCH, 3, WIDTH), "bias": w(WIDTH)}})
  else:  # Dual PatchNorm
    put("", {"patchln_pre": {"scale": 1 + w(k, scale=0.2), "bias": w(k, scale=0.1)},
             "embedding": {"kernel": w(k, WIDTH), "bias": w(WIDTH)}, "patchln_post": ln()})
  if posemb == "learn":
    rows = GRID * GRID + (1 if old_posemb else 0)
    name = "Transformer/posembed_input/pos_embedding" if old_posemb else "pos_embedding"
    flat[name] = w(1, rows, WIDTH)
  if cls:
    flat["cls"] = w(1, 1, WIDTH)
  blocks = [{"LayerNorm_0": ln(), "MultiHeadDotProductAttention_0": mha(), "LayerNorm_1": ln(),
             "MlpBlock_0": mlp()} for _ in range(DEPTH)]
  if scanned:
    put("Transformer/encoderblock/", jax.tree.map(lambda *xs: np.stack(xs), *blocks))
  else:
    for i, b in enumerate(blocks):
      put(f"Transformer/encoderblock_{i}/", b)
  put("Transformer/encoder_norm/", ln())
  if pool == "map":
    put("MAPHead_0/", {"probe": w(1, 1, WIDTH), "MultiHeadDotProductAttention_0": mha(),
                       "LayerNorm_0": ln(), "MlpBlock_0": mlp()})
  if head:
    put("head/", {"kernel": w(WIDTH, CLASSES), "bias": w(CLASSES)})
  return flat
