"""The train step and loop in-process: microbatching, freezing, parameter masks, NaN stops."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_trainable_model as tiny
from palix import partitioning
from palix.training import optimizers, param_paths, schedules, synthetic_data, trainer
from palix.training import train_step as train_step_lib
from palix.training.train_state import StateFactory

FEATURES = {"inputs": 4, "targets": 4}
NAN_STEP = 3  # the poisoned batch is the one of step 3


def _batch(size, start_step=0):
  return next(synthetic_data.synthetic_batches(
      split="train", batch_size=size, feature_lengths=FEATURES, start_step=start_step))


def test_microbatched_gradients_equal_the_full_batch():
  model = tiny.TinyModel()
  batch = {k: jnp.asarray(v) for k, v in _batch(16).items()}
  shapes = {k: v.shape for k, v in batch.items()}
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: model.get_initial_variables(jax.random.key(0), shapes)))["params"]
  rng = np.random.default_rng(0)  # random parameters without compiling an initialiser
  params = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), abstract)
  not_frozen = jax.tree.map(lambda _: False, params)

  def grads(k):
    return jax.jit(lambda p, b: train_step_lib.accumulate_gradients(
        model, not_frozen, p, b, jax.random.key(0), num_microbatches=k))(params, batch)

  full_grads, full_metrics = grads(1)
  micro_grads, micro_metrics = grads(4)
  for path, g in param_paths.flatten(full_grads).items():
    np.testing.assert_allclose(param_paths.flatten(micro_grads)[path], g, rtol=2e-5, atol=1e-7,
                               err_msg=path)
  assert float(micro_metrics["loss"]) == pytest.approx(float(full_metrics["loss"]), rel=1e-5)
  assert float(micro_metrics["num_examples"]) == 16  # counts are summed, not averaged
  with pytest.raises(ValueError, match="not divisible by num_microbatches 3"):
    grads(3)


def test_bf16_compute_with_fp32_params_gives_fp32_gradients():
  batch = {k: jnp.asarray(v) for k, v in _batch(8).items()}
  shapes = {k: v.shape for k, v in batch.items()}
  fp32, bf16 = tiny.TinyModel(), tiny.TinyModel(tiny.TinyConfig(dtype="bfloat16"))
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: bf16.get_initial_variables(jax.random.key(0), shapes)))["params"]
  assert {x.dtype for x in jax.tree.leaves(abstract)} == {jnp.dtype("float32")}
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), abstract)
  not_frozen = jax.tree.map(lambda _: False, params)
  results = [jax.jit(lambda p, b, m=m: train_step_lib.accumulate_gradients(
      m, not_frozen, p, b, None))(params, batch) for m in (fp32, bf16)]
  (grads32, metrics32), (grads16, metrics16) = results
  assert {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype("float32")}
  assert float(metrics16["loss"]) == pytest.approx(float(metrics32["loss"]), rel=2e-2)
  for path, g in param_paths.flatten(grads32).items():
    g16 = param_paths.flatten(grads16)[path]
    assert np.linalg.norm(g16 - g) <= 0.05 * np.linalg.norm(g) + 1e-6, path


def _zero_first_row(params, step):
  """A parameter mask (the n:m sparsity seam): row 0 of decoder/wi/kernel is kept at 0."""
  del step
  wi = params["decoder"]["wi"]
  return {**params, "decoder": {**params["decoder"], "wi": {**wi, "kernel":
                                                            wi["kernel"].at[0].set(0.0)}}}


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
  """One run with a frozen encoder, a parameter mask and a NaN batch at step 3."""
  model_dir = tmp_path_factory.mktemp("frozen_run")
  model = tiny.TinyModel(frozen=("encoder",))
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(1e-2), base=optimizers.adamw)

  def poisoned(*args, **kwargs):
    for step, batch in enumerate(synthetic_data.synthetic_batches(*args, **kwargs),
                                 kwargs["start_step"] + 1):
      if step == NAN_STEP:
        batch["images"][:] = np.nan
      yield batch

  with pytest.raises(FloatingPointError) as error:
    trainer.train(model=model, model_dir=str(model_dir), train_steps=5, batch_size=8,
                  mixture_or_task_name=synthetic_data.TASK_NAME, task_feature_lengths=FEATURES,
                  get_batches_fn=poisoned, optimizer=opt, checkpoint_period=1, log_period=1,
                  param_mask_fn=_zero_first_row, progress_bar=False)
  shapes = {k: (8,) + v.shape[1:] for k, v in _batch(8).items()}
  types = {k: v.dtype for k, v in _batch(8).items()}
  # The same seed and program give the run's initial parameters.
  initial = StateFactory(model, opt.with_frozen_prefixes(["encoder"]).make(),
                         partitioning.Partitioner(), shapes, types, seed=0).initialize()
  return {"error": str(error.value), "dir": model_dir, "initial": initial.params}


def test_nan_loss_stops_the_run_naming_the_step(frozen_run):
  assert f"at step {NAN_STEP}" in frozen_run["error"]
  saved = sorted(p.name for p in (frozen_run["dir"] / "checkpoints").iterdir())
  assert saved == ["1", "2"], saved  # nothing at or after the NaN step
  log = [json.loads(l) for l in (frozen_run["dir"] / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)


def test_frozen_params_stay_bit_identical_and_masks_apply(frozen_run):
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(str(frozen_run["dir"] / "checkpoints" / "2" / "state"))
  before = param_paths.flatten(frozen_run["initial"])
  after = param_paths.flatten(state["params"])
  assert before.keys() == after.keys()
  for path in before:
    if path.startswith("encoder/"):
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    else:
      assert not np.array_equal(after[path], before[path]), f"{path} did not train"
  np.testing.assert_array_equal(after["decoder/wi/kernel"][0], 0.0)
  opt_paths = [p for p, v in param_paths.flatten(state["opt_state"]).items() if np.ndim(v)]
  assert any("decoder" in p for p in opt_paths)
  assert not [p for p in opt_paths if "encoder" in p]  # no optimizer state for frozen params


PARTS = ((3, 1, {"inputs": 3, "targets": 2}), (5, 2, {"inputs": 4, "targets": 4}))  # rows, N, L


def _parts_batches(as_parts, *args, **kwargs):
  """Synthetic batches in two parts of different geometry (as ``batch_parts`` yields them), or
  the same rows padded to the larger geometry and concatenated into one batch."""
  del args
  step = kwargs["start_step"]
  while True:
    parts = [_batch_at(step * 2 + k, rows, num_images, lengths)
             for k, (rows, num_images, lengths) in enumerate(PARTS)]
    step += 1
    if as_parts:
      yield tuple(parts)
    else:
      padded = [_pad_to(part, 2, FEATURES) for part in parts]
      yield {key: np.concatenate([p[key] for p in padded]) for key in padded[0]}


def _pad_to(batch, num_images, lengths):
  padded = {}
  for key, value in batch.items():
    widths = [(0, 0)] * value.ndim
    if key in ("images", "image_mask"):
      widths[1] = (0, num_images - value.shape[1])
    else:
      widths[1] = (0, lengths["inputs" if key == "encoder_input_tokens" else "targets"]
                   - value.shape[1])
    padded[key] = np.pad(value, widths)
  return padded


def _batch_at(index, size, num_images, lengths):
  return next(synthetic_data.synthetic_batches(
      split="train", batch_size=size, feature_lengths=lengths, num_images=num_images,
      start_step=index))


def _train_on_parts(model_dir, as_parts):
  opt = optimizers.Optimizer(learning_rate_fn=schedules.constant(1e-2), base=optimizers.adamw)
  state = trainer.train(
      model=tiny.TinyModel(), model_dir=str(model_dir), train_steps=4, batch_size=8,
      mixture_or_task_name=synthetic_data.TASK_NAME, task_feature_lengths=FEATURES,
      get_batches_fn=lambda *a, **k: _parts_batches(as_parts, *a, **k), optimizer=opt,
      checkpoint_period=4, log_period=1, progress_bar=False, async_checkpointing=False)
  log = (model_dir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in log], param_paths.flatten(state.params)


def test_a_batch_in_parts_trains_like_the_padded_batch(tmp_path):
  """Parts of different geometry give the update of the same rows padded into one batch (every
  synthetic example has 2 target tokens, so the rows-weighted mean is the token mean)."""
  log, params = _train_on_parts(tmp_path / "parts", as_parts=True)
  padded_log, padded_params = _train_on_parts(tmp_path / "padded", as_parts=False)
  assert [r["step"] for r in log] == [1, 2, 3, 4]
  for record, padded in zip(log, padded_log):
    for key in ("loss", "accuracy", "num_examples", "num_tokens", "grad_norm"):
      assert record[key] == pytest.approx(padded[key], rel=1e-5), key
  assert log[0]["num_examples"] == 8
  assert params.keys() == padded_params.keys()
  for path, value in params.items():
    np.testing.assert_allclose(value, padded_params[path], rtol=1e-4, atol=1e-6, err_msg=path)
