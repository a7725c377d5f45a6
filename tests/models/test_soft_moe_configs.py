"""The Soft MoE gin scales: parameter counts equal a closed form and are within 2% of the paper's
(Puigcerver et al. 2023, arXiv:2308.00951 Table 8), and forward FLOPs stay flat as experts grow at
a fixed number of slots (the cost table of docs/soft_moe.md)."""

import gin
import pytest

from palix import config as palix_config
from palix import model_stats
from palix.eval.experiments import soft_moe_cost
from test_vit_params import sequential_vit_params

# gin file: (width, depth, mlp, heads, patch, experts, last_n, published parameter count).
SCALES = {
    "soft_moe_s16.gin": (384, 12, 1536, 6, 16, 128, 6, 933e6),
    "soft_moe_b16.gin": (768, 12, 3072, 12, 16, 128, 6, 3.7e9),
    "soft_moe_l16.gin": (1024, 24, 4096, 16, 16, 128, 12, 13.1e9),
}


def soft_moe_vit_params(width, depth, mlp, heads, patch, experts, last_n, slots=1):
  """A QK-normed ViT whose last ``last_n`` MLPs become ``experts`` MLPs plus the router's slot
  vectors (``width`` each) and its scale."""
  d = width
  mlp_block = (d * mlp + mlp) + (mlp * d + d)
  qk_norm = depth * 2 * 2 * (d // heads)  # scale and bias of the query and key LayerNorms
  dense = sequential_vit_params(d, depth, mlp, heads, patch)
  return dense + qk_norm + last_n * ((experts - 1) * mlp_block + d * experts * slots + 1)


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def gin_model(gin_file, bindings=()):
  palix_config.parse_gin([f"models/vit/{gin_file}"], bindings, finalize=False)
  return gin.query_parameter("%MODEL").scoped_configurable_fn()


@pytest.mark.parametrize("gin_file", sorted(SCALES))
def test_param_count_matches_closed_form_and_the_paper(clean_gin, gin_file):
  model = gin_model(gin_file, ["ViTConfig.scan = True"])  # one traced layer per stack
  count = model_stats.count_params(model_stats.param_shapes(model.module, model.example_inputs(1)))
  *sizes, published = SCALES[gin_file]
  assert count == soft_moe_vit_params(*sizes)
  # The paper's counts include a JFT head (29.6k classes); without it we are 0.02-1.2% below.
  assert abs(count / published - 1) < 0.02, (count, published)


def test_tiny_config_routes_with_capacity_factor_slots(clean_gin):
  model = gin_model("soft_moe_tiny.gin")
  shapes = model_stats.param_shapes(model.module, model.example_inputs(1))
  moe = shapes["Transformer"]["block01"]["moe"]
  assert moe["mu"].shape == (32, 4, 4)  # 16 tokens * capacity 1.0 / 4 experts
  assert "mlp" in shapes["Transformer"]["block00"]


def test_cost_table_params_grow_and_flops_stay_flat():
  """Tiny model, total slots fixed at 16: every extra expert adds exactly one MLP, and the
  forward FLOPs are identical (the routing and expert matmuls only depend on the slot count)."""
  rows = soft_moe_cost.cost_table(soft_moe_cost.TINY, experts=(1, 2, 4, 16), total_slots=16)
  mlp_block = 32 * 64 + 64 + 64 * 32 + 32
  assert [r["slots_per_expert"] for r in rows] == [16, 8, 4, 1]
  for a, b in zip(rows, rows[1:]):
    assert b["params"] - a["params"] == (b["experts"] - a["experts"]) * mlp_block
    assert b["forward_flops"] == a["forward_flops"]


@pytest.mark.parametrize("binding, message", [
    ("SoftMoeConfig.num_experts=0", "SoftMoeConfig.num_experts = 0: must be a positive integer"),
    ("SoftMoeConfig.group_size=5", "SoftMoeConfig.group_size = 5: does not divide the 16 tokens"),
    ("SoftMoeConfig.last_n_layers=3", "SoftMoeConfig.last_n_layers = 3: the MoE layers must lie "
     "within the ViT's 2 blocks"),
])
def test_palix_params_names_the_bad_binding(clean_gin, capsys, binding, message):
  from palix.cli import params  # pylint: disable=g-import-not-at-top
  code = params.run(["--gin_file=models/vit/soft_moe_tiny.gin", f"--gin.{binding}"])
  assert code == 2
  assert capsys.readouterr().err.startswith(f"palix params: {message}")
