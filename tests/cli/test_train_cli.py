"""``palix train`` and ``palix infer`` end to end on the tiny model and the synthetic task.

One module fixture runs ``palix train`` three times as subprocesses (sharing a compilation cache):
run A uninterrupted; run B with a slowed data source, killed with SIGKILL after its step-4
checkpoint, then rerun with the same command. Inference and evaluation then run in-process through
``palix.cli.main.main`` on A's checkpoint.
"""

import json
import pathlib
import signal
import sys
import time

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))

import subprocesses  # noqa: E402
import tb_events  # noqa: E402
import tiny_trainable_model as tiny  # noqa: E402
from palix.cli import main as cli_main  # noqa: E402
from palix.training import synthetic_data  # noqa: E402

STEPS, PERIOD = 12, 4
MODEL_GIN = str(subprocesses.TESTS_TRAINING / "tiny_model.gin")
EXPERIMENT_GIN = str(subprocesses.TESTS_TRAINING / "synthetic_experiment.gin")


def _train_args(model_dir, *extra):
  return ["-m", "palix.cli.main", "train", f"--gin_file={MODEL_GIN}",
          "--gin_file=runs/pretrain.gin", f"--gin_file={EXPERIMENT_GIN}",
          f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.trainer.train.checkpoint_period={PERIOD}", "--gin.trainer.train.log_period=2",
          *extra]


def _run(args, log, env, timeout=600):
  proc = subprocesses.start(args, log, env)
  code = subprocesses.wait_all([proc], timeout)[0]
  assert code == 0, f"{' '.join(args)} exited with {code}:\n{subprocesses.tail(log)}"


def _run_and_kill_after_checkpoint(args, log, env, checkpoint: pathlib.Path, timeout=600):
  proc = subprocesses.start(args, log, env)
  deadline = time.time() + timeout
  try:
    while not checkpoint.is_dir():
      assert proc.poll() is None, f"exited early ({proc.returncode}):\n{subprocesses.tail(log)}"
      assert time.time() < deadline, "no checkpoint before the timeout"
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  env = subprocesses.env(1, str(root / "jax_cache"))
  run_a, run_b = root / "a", root / "b"
  _run(_train_args(run_a), root / "a.log", env)
  slow = "--gin.synthetic_data.synthetic_batches.seconds_per_batch=0.25"
  code = _run_and_kill_after_checkpoint(_train_args(run_b, slow), root / "b1.log", env,
                                        run_b / "checkpoints" / str(PERIOD))
  killed_at = sorted(int(p.name) for p in (run_b / "checkpoints").iterdir() if p.name.isdigit())
  _run(_train_args(run_b, slow), root / "b2.log", env)
  return {"a": run_a, "b": run_b, "kill_code": code, "killed_at": killed_at, "root": root}


def _restore(path):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(str(path))


def test_train_writes_checkpoints_config_events_and_log_and_loss_falls(runs):
  a = runs["a"]
  saved = sorted(int(p.name) for p in (a / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [4, 8, 12]
  config = (a / "config.gin").read_text()
  assert "TinyConfig.dropout_rate = 0.1" in config and "TRAIN_STEPS = 12" in config
  assert "synthetic_batches" in (a / "config_full.gin").read_text()
  log = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [2, 4, 6, 8, 10, 12]
  for key in ("loss", "learning_rate", "grad_norm", "examples_per_s", "step_time_s", "accuracy"):
    assert all(key in r for r in log[1:]), key
  assert log[-1]["loss"] < 0.8 * log[0]["loss"], [r["loss"] for r in log]
  events = tb_events.scalars(a / "train")
  assert [s for s, _ in events["loss"]] == [2, 4, 6, 8, 10, 12]
  np.testing.assert_allclose([v for _, v in events["loss"]], [r["loss"] for r in log], rtol=1e-6)
  assert {"learning_rate", "grad_norm", "examples_per_s", "step_time_s"} <= set(events)


def test_killed_and_restarted_run_is_bit_identical(runs):
  assert runs["kill_code"] == -signal.SIGKILL
  assert PERIOD in runs["killed_at"] and STEPS not in runs["killed_at"], runs["killed_at"]
  a = _restore(runs["a"] / "checkpoints" / str(STEPS) / "state")
  b = _restore(runs["b"] / "checkpoints" / str(STEPS) / "state")
  assert int(a["step"]) == int(b["step"]) == STEPS
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, value in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_b[path]), np.asarray(value),
                                  err_msg=jax.tree_util.keystr(path))
  log_a = [json.loads(line) for line in (runs["a"] / "metrics.jsonl").read_text().splitlines()]
  log_b = [json.loads(line) for line in (runs["b"] / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log_b] == [r["step"] for r in log_a]  # no duplicated lines
  assert [r["loss"] for r in log_b] == [r["loss"] for r in log_a]


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _cli(*args):
  return cli_main.main(list(args))


def _greedy(model, params, batch):
  """An independent greedy decoder: feed back the argmax of each position."""
  forward = jax.jit(lambda p, tokens: model.module.apply(
      {"params": p}, batch["images"], batch["image_mask"], batch["encoder_input_tokens"], tokens))
  tokens = np.zeros_like(batch["decoder_input_tokens"])
  out = np.zeros_like(tokens)
  for t in range(tokens.shape[1]):
    out[:, t] = np.argmax(np.asarray(forward(params, tokens)[:, t]), axis=-1)
    if t + 1 < tokens.shape[1]:
      tokens[:, t + 1] = out[:, t]
  return out


def _cut(tokens):
  tokens = list(tokens)
  return [int(t) for t in tokens[:tokens.index(1) + 1 if 1 in tokens else len(tokens)] if t]


def test_infer_and_eval_from_the_trained_checkpoint(runs, clean_gin, capsys):
  out_dir = runs["root"] / "infer"
  common = [f"--gin_file={MODEL_GIN}", "--gin.BATCH_SIZE=16",
            f"--gin.CHECKPOINT_PATH='{runs['a'] / 'checkpoints'}'"]
  assert _cli("infer", *common, "--gin_file=runs/infer.gin", f"--gin_file={EXPERIMENT_GIN}",
              f"--gin.INFER_OUTPUT_DIR='{out_dir}'") == 0
  path = out_dir / "synthetic_brightness-validation.jsonl"
  assert str(path) in capsys.readouterr().out
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["index"] for r in records] == list(range(64))
  batch = next(synthetic_data.synthetic_batches(
      split="validation", batch_size=64, feature_lengths={"inputs": 4, "targets": 4},
      shuffle=False, repeat=False))
  params = _restore(runs["a"] / "checkpoints" / str(STEPS) / "state")["params"]
  model = tiny.TinyModel(tiny.TinyConfig(dropout_rate=0.1))
  greedy = _greedy(model, params, batch)
  for i, r in enumerate(records):
    assert r["inputs"] == _cut(batch["encoder_input_tokens"][i])
    assert r["target"] == _cut(batch["decoder_target_tokens"][i])
    assert r["prediction"] == _cut(greedy[i]), i
    assert r["score"] <= 0
  gin.clear_config()
  eval_dir = runs["root"] / "eval"
  assert _cli("infer", *common, "--gin_file=runs/eval_teacher_forced.gin",
              f"--gin_file={EXPERIMENT_GIN}", f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'") == 0
  metrics = json.loads((eval_dir / "eval_metrics.json").read_text())
  loss, want = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
  assert metrics["loss"] == pytest.approx(float(loss), rel=1e-5)
  assert metrics["accuracy"] == pytest.approx(float(want["accuracy"]), rel=1e-5)
  assert metrics["num_eval_examples"] == 64


@pytest.mark.parametrize("extra, message", [
    ([], "required gin macro(s) not set: BATCH_SIZE, MIXTURE_OR_TASK_NAME, MODEL_DIR, "
         "TASK_FEATURE_LENGTHS, TRAIN_STEPS"),
    ([f"--gin_file={EXPERIMENT_GIN}", "--gin.trainer.train.trian_steps=3"], "trian_steps"),
    (["--gin.trainr.train.train_steps=3"], "No configurable matching 'trainr.train'"),
])
def test_configuration_errors_are_clear(clean_gin, capsys, extra, message):
  with pytest.raises(SystemExit) as info:
    _cli("train", f"--gin_file={MODEL_GIN}", "--gin_file=runs/pretrain.gin", *extra)
  assert info.value.code == 2
  assert message in capsys.readouterr().err


def test_gin_files_must_not_bind_main(clean_gin, capsys, tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("__main__.train.model_dir = '/tmp/x'\n")
  with pytest.raises(SystemExit):
    _cli("train", f"--gin_file={bad}")
  assert "must not bind __main__" in capsys.readouterr().err

