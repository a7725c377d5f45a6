"""Every gin scale's parameter count equals a closed form derived here from the scale table.

The scale table is transcribed from Zhai et al. 2021 (Table 2) plus the ViT-22B row
(shared/reference/papers.md §1), independently of ``palix.models.vit.VARIANTS``.
"""

import gin
import pytest

from palix import config as palix_config
from palix import model_stats

# gin file: (scale name, width, depth, mlp, heads, patch); every file uses 224px images.
SCALES = {
    "vit_ti.gin": ("Ti", 192, 12, 768, 3, 16),
    "vit_s.gin": ("S", 384, 12, 1536, 6, 16),
    "vit_b.gin": ("B", 768, 12, 3072, 12, 16),
    "vit_l.gin": ("L", 1024, 24, 4096, 16, 16),
    "vit_h.gin": ("H", 1280, 32, 5120, 16, 14),
    "vit_g.gin": ("g", 1408, 40, 6144, 16, 14),
    "vit_gigantic.gin": ("G", 1664, 48, 8192, 16, 14),
    "vit_e.gin": ("e", 1792, 56, 15360, 16, 14),
    "vit_22b.gin": ("22B", 6144, 48, 24576, 48, 14),
}
# Published sizes without a head (ViT, ViT-G/14 and ViT-22B papers), as a loose cross-check.
PUBLISHED = {"vit_b.gin": 86e6, "vit_l.gin": 304e6, "vit_h.gin": 632e6, "vit_g.gin": 1.0e9,
             "vit_gigantic.gin": 1.84e9, "vit_e.gin": 3.9e9, "vit_22b.gin": 21.7e9}
IMAGE = 224


def embedding_params(width, patch, image=IMAGE):
  conv_stem = patch * patch * 3 * width + width  # kernel [p, p, 3, d] + bias
  learned_posemb = (image // patch) ** 2 * width
  return conv_stem + learned_posemb


def sequential_vit_params(width, depth, mlp, heads, patch):
  """Pre-LN blocks: 2 LNs with bias, Q/K/V/out with biases, MLP with biases; final LN."""
  d = width  # heads * head_dim == width, so the head count does not enter
  layer_norm = 2 * d
  attention = 4 * (d * d + d)
  mlp_block = (d * mlp + mlp) + (mlp * d + d)
  return depth * (2 * layer_norm + attention + mlp_block) + embedding_params(d, patch) + layer_norm


def parallel_vit22b_params(width, depth, mlp, heads, patch):
  """ViT-22B blocks: scale-only LN, fused_in [d, 3d + mlp] without bias, MLP-in bias, QK-norm
  scales (2 * head_dim), fused_out [d + mlp, d] + bias; scale-only final LN."""
  d, head_dim = width, width // heads
  block = d + d * (3 * d + mlp) + mlp + 2 * head_dim + (d + mlp) * d + d
  return depth * block + embedding_params(d, patch) + d


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def gin_param_count(gin_file, bindings=()):
  palix_config.parse_gin([f"models/vit/{gin_file}"], bindings, finalize=False)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  return model_stats.count_params(model_stats.param_shapes(model.module, model.example_inputs(1)))


def expected_count(gin_file):
  name, *sizes = SCALES[gin_file]
  expected = (parallel_vit22b_params if name == "22B" else sequential_vit_params)(*sizes)
  if gin_file in PUBLISHED:
    assert abs(expected / PUBLISHED[gin_file] - 1) < 0.03, (expected, PUBLISHED[gin_file])
  return expected


@pytest.mark.parametrize("gin_file", sorted(SCALES))
def test_gin_scale_param_count_matches_closed_form(clean_gin, gin_file):
  """Counted with ``scan=True`` bound: one traced layer instead of up to 56 keeps this fast, and
  scan only stacks the per-layer parameters (``test_vit.py`` applies unrolled params, stacked,
  to the scanned model). The files exactly as written are counted by the slow test below."""
  assert gin_param_count(gin_file, ["ViTConfig.scan = True"]) == expected_count(gin_file)


@pytest.mark.slow
@pytest.mark.parametrize("gin_file", sorted(SCALES))
def test_gin_scale_param_count_as_written(clean_gin, gin_file):
  assert gin_param_count(gin_file) == expected_count(gin_file)


def test_vit22b_in_published_range():
  assert 21.6e9 <= expected_count("vit_22b.gin") <= 21.8e9


def test_every_scale_file_is_covered():
  gin_dir = palix_config.GIN_DIR / "models" / "vit"
  assert {p.name for p in gin_dir.glob("vit_*.gin")} == set(SCALES)
