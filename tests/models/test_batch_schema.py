"""The one batch schema (``palix.models.base``): shapes per geometry, error wording, shift-right."""

import jax.numpy as jnp
import numpy as np
import pytest

from palix.models import base
from palix.models.batch_checks import validate_batch


def test_shapes_follow_the_geometry():
  shapes = base.batch_shapes(4, num_images=3, image_size=16,
                             feature_lengths={"inputs": 7, "targets": 5})
  assert shapes == {"images": (4, 3, 16, 16, 3), "image_mask": (4, 3),
                    "encoder_input_tokens": (4, 7), "decoder_input_tokens": (4, 5),
                    "decoder_target_tokens": (4, 5), "decoder_loss_weights": (4, 5)}
  assert base.batch_dtypes() == {"images": np.float32, "image_mask": np.int32,
                                 "encoder_input_tokens": np.int32,
                                 "decoder_input_tokens": np.int32,
                                 "decoder_target_tokens": np.int32,
                                 "decoder_loss_weights": np.float32}
  assert set(base.INPUT_KEYS + base.TARGET_KEYS) == set(base.MODEL_FEATURES)


def test_batch_checks_name_the_schema_shape():
  batch = {k: np.zeros(s, base.MODEL_FEATURES[k].dtype) for k, s in base.batch_shapes(
      2, num_images=1, image_size=4, feature_lengths={"inputs": 3, "targets": 3}).items()}
  validate_batch(batch, list(batch))
  batch["images"] = batch["images"][:, 0]
  with pytest.raises(ValueError, match=r"expected \[batch, num_images, height, width, 3\]"):
    validate_batch(batch, list(batch))


@pytest.mark.parametrize("xp", [np, jnp])
def test_shift_right_inserts_bos_and_drops_the_last_token(xp):
  targets = xp.asarray([[5, 6, 1, 0], [7, 1, 0, 0]], dtype=xp.int32)
  expected = [[0, 5, 6, 1], [0, 7, 1, 0]]
  np.testing.assert_array_equal(np.asarray(base.shift_right(targets, xp=xp)), expected)
  np.testing.assert_array_equal(np.asarray(base.shift_right(targets[0], bos_id=9, xp=xp)),
                                [9, 5, 6, 1])


def test_task_lengths_must_fit_the_models_lengths(tmp_path):
  from palix.models.palix_model import PaliXModel  # pylint: disable=g-import-not-at-top
  from palix.training.checkpoint_split import CheckpointSplit  # pylint: disable=g-import-not-at-top
  model = PaliXModel(None, max_input_len=16, max_target_len=8)
  model.check_feature_lengths({"inputs": 16, "targets": 8})  # equal: fine
  model.check_feature_lengths({"inputs": 12, "targets": 4})  # shorter: fine
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS\['targets'\] = 12 is longer than "
                     r"PaliXModel.max_target_len = 8"):
    model.check_feature_lengths({"inputs": 16, "targets": 12})
  with pytest.raises(ValueError, match=r"PaliXModel.max_input_len = 16"):
    model.check_feature_lengths({"inputs": 17, "targets": 8})

  def no_data(*args, **kwargs):
    raise AssertionError("the lengths are checked before any data is read")

  split = CheckpointSplit(model=model, checkpoint_path="/nonexistent", mixture_or_task_name="t",
                          task_feature_lengths={"inputs": 32, "targets": 8},
                          get_batches_fn=no_data)
  with pytest.raises(ValueError, match="max_input_len"):
    split.open()
  # The trainer and palix eval check at start-up too, before reading any data or checkpoint.
  from palix.eval import evaluator  # pylint: disable=g-import-not-at-top
  from palix.training import trainer  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="PaliXModel.max_target_len = 8"):
    trainer.train(model=model, model_dir=str(tmp_path), train_steps=1, batch_size=1,
                  mixture_or_task_name="t", task_feature_lengths={"inputs": 8, "targets": 9},
                  get_batches_fn=no_data, optimizer=None)
  with pytest.raises(ValueError, match="PaliXModel.max_input_len = 16"):
    evaluator.evaluate(model=model, checkpoint_path="/nonexistent", mixture_or_task_name="t",
                       task_feature_lengths={"inputs": 20, "targets": 99})
