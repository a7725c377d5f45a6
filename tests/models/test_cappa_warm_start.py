"""The warm-start gin path of docs/cappa.md: a CapPa trained with warm_start_cappa.gin restores its
``vit/`` subtree into the PaLI-X of warm_start_palix.gin + warm_start_from_cappa.gin, bit for bit,
and nothing else; the same PaLI-X without the warm-start file keeps its fresh ViT.

Both runs go through ``trainer.train`` as ``palix train`` configures it, with the TensorFlow-free
synthetic task swapped in (tests/training/synthetic_experiment.gin)."""

import pathlib

import gin
import jax
import numpy as np
import pytest

from palix import config as palix_config
from palix.training import param_paths
from palix.training import trainer

SYNTHETIC_GIN = str(pathlib.Path(__file__).resolve().parents[1] / "training"
                    / "synthetic_experiment.gin")
COMMON = ["trainer.train.progress_bar = False", "trainer.train.async_checkpointing = False",
          "BATCH_SIZE = 4"]


def _train(gin_files, bindings):
  gin.clear_config()
  try:
    palix_config.parse_gin(["runs/pretrain.gin", *gin_files, SYNTHETIC_GIN], COMMON + bindings)
    return trainer.train()
  finally:
    gin.clear_config()


def _flat(params):
  return {path: np.asarray(value) for path, value in param_paths.flatten(params).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("warm_start")
  cappa = _train(["experiments/warm_start_cappa.gin"],
                 [f"MODEL_DIR = '{tmp / 'cappa'}'", "TRAIN_STEPS = 2"])
  # TRAIN_STEPS = 0: the trainer initialises (and restores) the state and stops before step 1.
  palix = ["experiments/warm_start_palix.gin"]
  steps = ["TRAIN_STEPS = 0", "schedules.cosine.total_steps = 10"]
  warm = _train(palix + ["experiments/warm_start_from_cappa.gin"],
                steps + [f"MODEL_DIR = '{tmp / 'warm'}'", f"CAPPA_CHECKPOINT = '{tmp / 'cappa'}'"])
  scratch = _train(palix, steps + [f"MODEL_DIR = '{tmp / 'scratch'}'"])
  return _flat(cappa.params), _flat(warm.params), _flat(scratch.params)


def _vit(flat):
  return {path: value for path, value in flat.items() if path.startswith("vit/")}


def test_the_cappa_vit_has_the_palix_vit_shape(runs):
  cappa, warm, _ = runs
  assert len(_vit(cappa)) > 10
  assert {p: v.shape for p, v in _vit(cappa).items()} == {p: v.shape for p, v in _vit(warm).items()}


def test_warm_start_loads_every_cappa_vit_array(runs):
  cappa, warm, scratch = runs
  for path, value in _vit(cappa).items():
    np.testing.assert_array_equal(warm[path], value, err_msg=path)
  # The CapPa ViT is not what a fresh PaLI-X has (so the equality above says something): its two
  # training steps moved every non-constant kernel away from the initialisation.
  moved = [p for p in _vit(cappa) if not np.array_equal(cappa[p], scratch[p])]
  assert len(moved) == len(_vit(cappa)), sorted(set(_vit(cappa)) - set(moved))


def test_only_the_vit_is_restored(runs):
  _, warm, scratch = runs
  assert set(warm) == set(scratch)
  others = [p for p in warm if not p.startswith("vit/")]
  assert others, "PaLI-X has parameters outside vit/"
  for path in others:
    np.testing.assert_array_equal(warm[path], scratch[path], err_msg=path)
