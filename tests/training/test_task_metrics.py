"""Per-task metrics: per-example sums become per-task sums in the step (over microbatches and
batch parts alike) and per-task loss and token accuracy in the trainer's logs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palix.training import train_step as train_step_lib
from palix.training import trainer

NUM_TASKS = 3


class PerExampleModel:
  """A linear scorer with a per-example loss ``(w . x - y)^2`` and per-example sums."""

  def loss_fn(self, params, batch, rng):
    del rng
    errors = jnp.square(batch["x"] @ params["w"] - batch["y"])  # [B]
    tokens = batch["weights"]
    metrics = {"per_example/loss": errors * tokens, "per_example/tokens": tokens,
               "per_example/correct": (errors < 0.5).astype(jnp.float32) * tokens,
               "num_examples": jnp.asarray(errors.shape[0], jnp.float32)}
    return (errors * tokens).sum() / tokens.sum(), metrics


def _batch(rows, seed):
  rng = np.random.default_rng(seed)
  return {"x": jnp.asarray(rng.normal(size=(rows, 4)), jnp.float32),
          "y": jnp.asarray(rng.normal(size=(rows,)), jnp.float32),
          "weights": jnp.asarray(rng.integers(1, 4, rows), jnp.float32),
          "task_ids": jnp.asarray(rng.integers(0, NUM_TASKS, rows), jnp.int32)}


def _reference(batches, params):
  """Per-task sums written out with numpy."""
  sums = {k: np.zeros(NUM_TASKS) for k in ("loss", "tokens", "correct")}
  for b in batches:
    errors = np.square(np.asarray(b["x"]) @ np.asarray(params["w"]) - np.asarray(b["y"]))
    for i, task in enumerate(np.asarray(b["task_ids"])):
      w = float(b["weights"][i])
      sums["loss"][task] += errors[i] * w
      sums["tokens"][task] += w
      sums["correct"][task] += float(errors[i] < 0.5) * w
  return sums


@pytest.fixture(scope="module")
def params():
  return {"w": jnp.asarray([0.5, -0.2, 0.1, 0.3], jnp.float32)}


def _step(params, batch, microbatches=1, num_tasks=NUM_TASKS):
  frozen = jax.tree.map(lambda _: False, params)
  return jax.jit(lambda p, b: train_step_lib.accumulate_gradients(
      PerExampleModel(), frozen, p, b, jax.random.key(0), num_microbatches=microbatches,
      num_tasks=num_tasks)[1])(params, batch)


@pytest.mark.parametrize("microbatches", [1, 4])
def test_per_task_sums_equal_the_reference(params, microbatches):
  batch = _batch(8, seed=0)
  metrics = _step(params, batch, microbatches)
  expected = _reference([batch], params)
  for name in ("loss", "tokens", "correct"):
    np.testing.assert_allclose(metrics[f"per_task/{name}"], expected[name], rtol=1e-5)
  assert not any(k.startswith("per_example/") for k in metrics)


def test_parts_add_their_task_sums(params):
  parts = (_batch(4, seed=1), _batch(6, seed=2))
  metrics = _step(params, parts)
  expected = _reference(parts, params)
  for name in ("loss", "tokens", "correct"):
    np.testing.assert_allclose(metrics[f"per_task/{name}"], expected[name], rtol=1e-5)
  assert float(metrics["num_examples"]) == 10


def test_without_task_names_nothing_per_task_is_reported(params):
  metrics = _step(params, _batch(8, seed=0), num_tasks=0)
  assert not any(k.startswith(("per_task/", "per_example/")) for k in metrics)


def test_trainer_turns_period_sums_into_loss_and_accuracy():
  sums = {"per_task/loss": np.array([3.0, 0.0, 8.0]), "per_task/tokens": np.array([6.0, 0.0, 4.0]),
          "per_task/correct": np.array([3.0, 0.0, 1.0])}
  scalars = trainer.task_scalars(sums, ("easy_vqa", "shapes_detection", "video"))
  assert scalars == {"task_loss/easy_vqa": 0.5, "task_accuracy/easy_vqa": 0.5,
                     "task_loss/video": 2.0, "task_accuracy/video": 0.25}
