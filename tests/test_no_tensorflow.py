"""palix (outside ``tasks/``) imports and runs where TensorFlow and seqio are absent.

A GPU box may have only jax/flax; the data layer is the only place allowed to need TF. The check
runs in a fresh interpreter whose import system refuses tensorflow, seqio (and torch and
transformers, which only tests and benchmarks use), so an import of any of them fails loudly.
"""

import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import importlib.abc
    import sys

    BLOCKED = ("tensorflow", "seqio", "torch", "transformers")

    class Refuse(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ImportError(f"blocked import of {name!r}: palix must run without it")
        return None

    for name in BLOCKED:
      sys.modules[name] = None  # `import tensorflow` raises ImportError even if cached elsewhere
    sys.meta_path.insert(0, Refuse())

    import numpy as np
    import jax
    import palix
    import palix.cli.params
    import palix.cli.infer
    import palix.few_shot
    import palix.generate
    import palix.interop.hf_vit
    import palix.loc_tokens
    from palix.models import vit

    config = vit.ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8,
                           image_size=16)
    model = vit.ViT(config)
    images = np.zeros((1, 16, 16, 3), np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), images)
    tokens, out = jax.jit(model.apply)(variables, images)
    assert tokens.shape == (1, 4, 32), tokens.shape

    assert palix.cli.params.run(["--gin_file=gin/models/vit/vit_ti.gin"]) == 0
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m])
    assert not loaded, loaded
    print("NO_TF_OK")
""")


def test_palix_runs_without_tensorflow():
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  assert "NO_TF_OK" in result.stdout
  # ViT-Ti/16 at 224px (closed form as in tests/models/test_vit_params.py).
  d, depth, mlp, patch = 192, 12, 768, 16
  block = 2 * 2 * d + 4 * (d * d + d) + 2 * d * mlp + mlp + d
  total = depth * block + patch * patch * 3 * d + d + (224 // patch) ** 2 * d + 2 * d
  assert result.stdout.strip().splitlines()[-2] == f"total_params: {total}"
