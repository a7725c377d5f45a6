"""A tiny OWL detector for the tests that run it through files: its gin file and a checkpoint."""

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from palix.models import owl
from palix.models.text_tower import TextTowerConfig
from palix.models.vit import GlobalAveragePool, ViTConfig

MODEL_GIN = """
import palix.models.owl
import palix.models.text_tower
import palix.models.vit
ViTConfig.width = 16
ViTConfig.depth = 1
ViTConfig.mlp_dim = 32
ViTConfig.num_heads = 2
ViTConfig.patch_size = 8
ViTConfig.image_size = 32
ViTConfig.pool = %vit.GlobalAveragePool
TextTowerConfig.vocab_size = 2048
TextTowerConfig.max_len = 4
TextTowerConfig.width = 16
TextTowerConfig.depth = 1
TextTowerConfig.mlp_dim = 32
TextTowerConfig.num_heads = 2
OwlConfig.vit = @ViTConfig()
OwlConfig.text = @TextTowerConfig()
OwlConfig.embed_dim = 8
OwlModel.config = @OwlConfig()
OwlModel.image_size = 32
OwlModel.max_queries = 3
OwlModel.max_query_len = 4
MODEL = @OwlModel()
"""


def model() -> owl.OwlModel:
  """The model ``MODEL_GIN`` builds."""
  vit = ViTConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, image_size=32,
                  pool=GlobalAveragePool)
  text = TextTowerConfig(vocab_size=2048, max_len=4, width=16, depth=1, mlp_dim=32, num_heads=2)
  return owl.OwlModel(owl.OwlConfig(vit=vit, text=text, embed_dim=8), image_size=32,
                      max_queries=3, max_query_len=4)


def save(folder, shift: float = 5.0):
  """Writes ``model.gin`` and a params-only checkpoint ``ckpt`` into ``folder`` (a pathlib
  path); every class logit is shifted by ``shift`` so the untrained detector finds boxes.
  Returns the parameters."""
  params = nn.meta.unbox(model().get_initial_variables(jax.random.key(0))["params"])
  params["class_head"]["shift"]["bias"] = np.full((1,), shift, np.float32)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(folder / "ckpt"), {"params": params}, force=True)
  (folder / "model.gin").write_text(MODEL_GIN)
  return params
