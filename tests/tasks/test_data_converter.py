"""The PaLI-X feature converter: exact model keys, shifts, padding, masks and overflow policy."""

import numpy as np
import pytest
import tensorflow as tf

from palix.models import base as model_base
from palix.tasks import feature_converter as fc

LENGTHS = {"inputs": 5, "targets": 4}


def _dataset(inputs, targets, num_images, size=8, record_id="file.jsonl:3"):
  images = np.linspace(-1, 1, num_images * size * size * 3, dtype=np.float32).reshape(
      num_images, size, size, 3)
  example = {"inputs": np.array(inputs, np.int32), "targets": np.array(targets, np.int32),
             "images": images, "record_id": record_id, "answers": ["x", "y"]}
  return tf.data.Dataset.from_tensors(example), images


def _convert(converter, dataset, lengths=LENGTHS):
  return next(iter(converter(dataset, lengths).as_numpy_iterator()))


def test_converted_examples_follow_the_batch_schema():
  converter = fc.PaliXFeatureConverter(num_images=3, image_size=8)
  out = _convert(converter, _dataset([5, 6, 1], [7, 8, 1], 2)[0])
  assert set(out) == set(model_base.MODEL_FEATURES)
  expected = {"images": (3, 8, 8, 3), "image_mask": (3,),
              "encoder_input_tokens": (LENGTHS["inputs"],)}
  expected.update({k: (LENGTHS["targets"],) for k in model_base.TARGET_KEYS})
  assert converter.get_model_feature_lengths(LENGTHS) == expected
  for key, value in out.items():
    assert value.shape == expected[key], key
    assert value.dtype == model_base.MODEL_FEATURES[key].dtype, key


def test_tokens_are_padded_and_targets_shifted_right_with_bos_0():
  dataset, images = _dataset([5, 6, 1], [7, 8, 1], 2)
  out = _convert(fc.PaliXFeatureConverter(num_images=3, image_size=8), dataset)
  np.testing.assert_array_equal(out["encoder_input_tokens"], [5, 6, 1, 0, 0])
  np.testing.assert_array_equal(out["decoder_target_tokens"], [7, 8, 1, 0])
  np.testing.assert_array_equal(out["decoder_input_tokens"], [0, 7, 8, 1])
  np.testing.assert_array_equal(out["decoder_loss_weights"], [1, 1, 1, 0])
  np.testing.assert_array_equal(out["image_mask"], [1, 1, 0])
  np.testing.assert_array_equal(out["images"][:2], images)
  assert np.all(out["images"][2] == 0)


def test_exact_fit_is_accepted():
  out = _convert(fc.PaliXFeatureConverter(num_images=1, image_size=8),
                 _dataset([2, 3, 4, 5, 1], [9, 9, 9, 1], 1)[0])
  np.testing.assert_array_equal(out["encoder_input_tokens"], [2, 3, 4, 5, 1])
  np.testing.assert_array_equal(out["decoder_input_tokens"], [0, 9, 9, 9])


def test_overlong_prompt_is_an_error_naming_task_and_record():
  converter = fc.PaliXFeatureConverter(num_images=1, image_size=8, task_name="my_task")
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"(?s)my_task.*inputs is longer than its feature length 5"
                     r".*file.jsonl:3"):
    _convert(converter, _dataset([2, 3, 4, 5, 6, 1], [9, 1], 1)[0])


def test_truncation_is_counted_and_keeps_eos_last():
  counter = fc.TruncationCounter()
  converter = fc.PaliXFeatureConverter(num_images=1, image_size=8, overflow="truncate",
                                       task_name="t", counter=counter)
  out = _convert(converter, _dataset([2, 3, 4, 5, 6, 7, 1], [9, 8, 7, 6, 1], 1)[0])
  np.testing.assert_array_equal(out["encoder_input_tokens"], [2, 3, 4, 5, 1])
  np.testing.assert_array_equal(out["decoder_target_tokens"], [9, 8, 7, 1])
  assert counter.counts == {"t/inputs": 1, "t/targets": 1}
  _convert(converter, _dataset([2, 3, 4, 5, 6, 7, 1], [9, 1], 1)[0])
  assert counter.counts == {"t/inputs": 2, "t/targets": 1}


def test_too_many_images_and_bad_settings_are_errors():
  converter = fc.PaliXFeatureConverter(num_images=2, image_size=8, task_name="clips")
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)clips.*num_images=2"):
    _convert(converter, _dataset([2, 1], [3, 1], 3)[0])
  with pytest.raises(ValueError, match="exactly the keys"):
    converter(_dataset([2, 1], [3, 1], 1)[0], {"inputs": 4})
  with pytest.raises(ValueError, match="overflow"):
    fc.PaliXFeatureConverter(overflow="ignore")
  with pytest.raises(ValueError, match="feature 'images' missing"):
    converter(tf.data.Dataset.from_tensors({"inputs": [1], "targets": [1]}), LENGTHS)


def test_zero_example_has_no_images_and_no_loss():
  converter = fc.PaliXFeatureConverter(num_images=2, image_size=8)
  zero = fc.zero_example(converter(_dataset([5, 1], [7, 1], 1)[0], LENGTHS).element_spec)
  assert zero["images"].shape == (2, 8, 8, 3)
  assert float(tf.reduce_sum(zero["decoder_loss_weights"])) == 0
  assert int(tf.reduce_sum(zero["image_mask"])) == 0


def test_raw_fields_pass_through_with_fixed_shapes():
  """``keep_raw``: the ``raw/`` copies of the source's fields next to the model features, image
  paths and sizes padded to ``num_images``; without it, only the model features."""
  images = np.zeros((2, 8, 8, 3), np.float32)
  example = fc.copy_raw_fields({
      "inputs": np.array([5, 1], np.int32), "targets": np.array([7, 1], np.int32),
      "images": images, "record_id": "data.jsonl:4", "answers": ["x", "y"],
      "image/paths": ["a.png", "b.png"], "example_seed": np.zeros(2, np.int64)})
  example["image/sizes"] = np.array([[30, 40], [50, 60]], np.int32)
  dataset = tf.data.Dataset.from_tensors(example)
  plain = _convert(fc.PaliXFeatureConverter(num_images=3, image_size=8), dataset)
  assert set(plain) == set(model_base.MODEL_FEATURES)
  out = _convert(fc.PaliXFeatureConverter(num_images=3, image_size=8, keep_raw=True), dataset)
  assert set(out) - set(model_base.MODEL_FEATURES) == {
      "raw/inputs", "raw/targets", "raw/record_id", "raw/answers", "raw/image/paths",
      "raw/image/sizes", "raw/images"}  # example_seed is bookkeeping, not a field
  assert out["raw/record_id"] == b"data.jsonl:4" and out["raw/answers"].tolist() == [b"x", b"y"]
  assert out["raw/image/paths"].tolist() == [b"a.png", b"b.png", b""]
  np.testing.assert_array_equal(out["raw/image/sizes"], [[30, 40], [50, 60], [0, 0]])
  np.testing.assert_array_equal(out["encoder_input_tokens"], plain["encoder_input_tokens"])
  zero = fc.zero_example(
      fc.PaliXFeatureConverter(num_images=3, image_size=8, keep_raw=True)(
          dataset, LENGTHS).element_spec)
  assert zero["raw/record_id"].numpy() == b"" and zero["raw/image/paths"].shape == (3,)
