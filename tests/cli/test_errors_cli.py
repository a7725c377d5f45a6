"""Bad inputs through the real ``palix`` command, each in a subprocess under a timeout.

Every case asserts the exit code, that stderr ends with one ``palix CMD: error: ...`` line naming
the file and line, the parameter or the flag, and (through the timeout) that the process exits.
The data cases use a JSONL task of 16 px images that fails in its first batch, before a model is
built; the checkpoint cases train the tiny contract model (tests/training) for one step, once.
The libraries' start-up noise is palix's to hide, so the environment does not set
``TF_CPP_MIN_LOG_LEVEL``.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
TESTS_TRAINING = REPO / "tests" / "training"
sys.path.insert(0, str(TESTS_TRAINING))

import subprocesses  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
TIMEOUT_S = 300  # a hang fails the test; a healthy run takes seconds (minutes on a loaded VM)
NOISE = re.compile(r"cuda|cuInit|rendezvous|oneDNN|absl::|^[IWE]\d{4} |Traceback", re.I | re.M)
LONG_PROMPT = "answer en what colour is the square in the middle of the picture?"  # > 8 tokens

TASKS_MODULE = """
from palix.tasks import registry
from palix.tasks.sources import jsonl

for name in ("my_squares", "my_long_answers"):
  registry.add_task(name, jsonl.JsonlSource({"train": f"{name}/train.jsonl"}), replace=True)
"""

EXPERIMENT = """
include 'models/palix/palix_tiny.gin'
T5Config.vocab_size = 2048
MIXTURE_OR_TASK_NAME = 'my_squares'
TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 12}
PaliXModel.max_input_len = 8
PaliXModel.max_target_len = 12
TRAIN_STEPS = 3
BATCH_SIZE = 8  # every record is in the first batch
MODEL_DIR = 'out/my_squares'
"""


def _env():
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PALIX_DEBUG")}
  env.update(PYTHONPATH=os.pathsep.join([str(TESTS_TRAINING), str(REPO)]),
             XLA_FLAGS=subprocesses.FAST_COMPILE_FLAGS)
  return env


def palix(*args, cwd):
  """``palix ARGS`` as a user runs it (a new process); fails the test if it does not exit."""
  try:
    return subprocess.run([sys.executable, "-m", "palix.cli.main", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"palix {' '.join(args)} did not exit within {TIMEOUT_S} s (hung); stderr:\n"
                f"{(e.stderr or b'')[-3000:]}")


def log_lines(stderr):
  """palix's log lines without the logging prefix, which depends on the root logger's handler."""
  return [re.sub(r"^(?:INFO|WARNING)[: ]palix[\w.]*:\s?", "", line)
          for line in stderr.strip().splitlines()]


def error_line(result, code):
  """The last stderr line, after checking the exit code and that nothing else is noise."""
  assert result.returncode == code, (result.returncode, result.stderr[-3000:])
  assert not NOISE.search(result.stderr), result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
  """A user's folder: two JSONL tasks (record 3 of each too long for 8/12 tokens), the module that
  registers them and an experiment file."""
  folder = tmp_path_factory.mktemp("user")
  for name in ("my_squares", "my_long_answers"):
    (folder / name / "img").mkdir(parents=True)
    with open(folder / name / "train.jsonl", "w") as f:
      for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(folder / name / f"img/{i}.png")
        prompt, answer = "caption en", "a grey square"
        if i == 2 and name == "my_squares":
          prompt = LONG_PROMPT
        if i == 2 and name == "my_long_answers":
          answer = " ".join(["<loc0012><loc0034><loc0056><loc0078> square"] * 3)
        f.write(json.dumps({"image": f"img/{i}.png", "prefix": prompt, "suffix": answer}) + "\n")
  (folder / "my_tasks.py").write_text(TASKS_MODULE)
  (folder / "my_experiment.gin").write_text(EXPERIMENT)
  return folder


def _train_on_my_data(folder, *extra, module=True):
  """``palix train`` of the experiment; without ``module``, TensorFlow is never imported (for
  cases that fail while parsing the flags)."""
  return palix("train", *(["--module=my_tasks"] if module else []), "--gin_file=runs/pretrain.gin",
               "--gin_file=my_experiment.gin", *extra, cwd=folder)


OVERLONG = {
    "my_squares": r"palix train: error: task 'my_squares': inputs is longer than its feature "
                  r"length 8 .*record: my_squares/train\.jsonl:3 tokens: \d+$",
    "my_long_answers": r"palix train: error: task 'my_long_answers': targets is longer than its "
                       r"feature length 12 .*record: my_long_answers/train\.jsonl:3 tokens: \d+$",
}


def test_an_overlong_prompt_is_one_line_naming_the_record_and_the_process_exits(data_folder):
  result = _train_on_my_data(data_folder, "--gin.trainer.train.seed=1")
  assert result.stderr.count("\n") == 1, result.stderr  # the error line and nothing else
  assert re.match(OVERLONG["my_squares"], error_line(result, 1))


@pytest.mark.slow  # ~10 processes of 5-30 s; the default suite runs the case once (above)
@pytest.mark.parametrize("task", ["my_squares"] * 5 + ["my_long_answers"] * 2)
def test_overlong_examples_never_hang(data_folder, task):
  """The hang was intermittent (4 of 7 runs of the prompt case, 2 of 2 with long targets)."""
  result = _train_on_my_data(data_folder, f"--gin.MIXTURE_OR_TASK_NAME='{task}'")
  assert re.match(OVERLONG[task], error_line(result, 1))


def test_a_string_without_inner_quotes_gets_the_quoting_hint(data_folder):
  result = _train_on_my_data(data_folder, "--gin.MODEL_DIR=out/x", module=False)
  assert error_line(result, 2) == (
      "palix train: error: --gin.MODEL_DIR=out/x: 'out/x' is not a gin value (Failed to parse "
      "token 'out'); a string needs quotes inside the shell's quotes: --gin.MODEL_DIR=\"'out/x'\"")


def test_flags_that_nothing_reads_fail_by_name_with_strict_gin(data_folder):
  result = _train_on_my_data(data_folder, "--gin.TRAIN_STEP=10", "--gin.MAX_EVAL_EXAMPLES=3",
                             "--strict_gin", module=False)
  line = error_line(result, 2)
  assert line.startswith("palix train: error: --gin.TRAIN_STEP=10: no gin binding of this run "
                         "reads the macro TRAIN_STEP; did you mean TRAIN_STEPS?; "
                         "--gin.MAX_EVAL_EXAMPLES=3: no gin binding of this run reads the macro "
                         "MAX_EVAL_EXAMPLES"), line
  assert line.endswith("(--strict_gin)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished one-step run of the tiny model on the synthetic task: ``(folder, run flags)``."""
  folder = tmp_path_factory.mktemp("tiny")
  flags = [f"--gin_file={TESTS_TRAINING / 'tiny_model.gin'}", "--gin_file=runs/pretrain.gin",
           f"--gin_file={TESTS_TRAINING / 'synthetic_experiment.gin'}", "--gin.TRAIN_STEPS=1",
           "--gin.BATCH_SIZE=4", "--gin.MODEL_DIR='run'", "--gin.trainer.train.progress_bar=False"]
  result = palix("train", *flags, cwd=folder)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (folder / "run" / "checkpoints" / "1").is_dir()
  return folder, flags


def test_rerunning_a_finished_run_says_it_is_complete(trained):
  folder, flags = trained
  result = palix("train", *flags, "--gin.NOT_A_THING=1", cwd=folder)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = log_lines(result.stderr)
  assert lines[0] == ("--gin.NOT_A_THING=1: no gin binding of this run reads the macro NOT_A_THING "
                      "(ignored; --strict_gin makes this an error)"), lines
  assert lines[-1] == (f"{folder / 'run' / 'checkpoints'} already holds step 1 and train_steps is "
                       "1: training is complete, nothing to do (raise TRAIN_STEPS to train "
                       "further)"), lines
  assert "training steps" not in result.stderr


def test_resuming_another_model_lists_the_parameters_that_differ(trained):
  folder, flags = trained
  result = palix("train", *flags, "--gin.TRAIN_STEPS=2", "--gin.TinyConfig.embed=8", cwd=folder)
  lines = result.stderr.strip().splitlines()
  assert error_line(result, 1).startswith("  '"), lines  # the last differing parameter
  first = next(i for i, line in enumerate(lines) if line.startswith("palix train: error: "))
  assert lines[first] == (
      f"palix train: error: {folder / 'run' / 'checkpoints'} holds a different model (step 1): "
      f"{len(lines) - first - 1} parameter(s) differ from this run's model. Train into a new "
      "MODEL_DIR, or start from those weights with runs/finetune.gin (INITIAL_CHECKPOINT_PATH; "
      "checkpoints.InitialCheckpoint.include selects what to restore):")
  assert ("  'decoder/logits/kernel': shape (8, 12) but the checkpoint's 'decoder/logits/kernel' "
          "has shape (16, 12)") in lines[first + 1:]


def _partial_copy(trained, name):
  """The run as a kill during its first save leaves it: step 1 only as Orbax's temporary folder."""
  folder, flags = trained
  shutil.copytree(folder / "run", folder / name)
  checkpoints = folder / name / "checkpoints"
  os.rename(checkpoints / "1", checkpoints / "1.orbax-checkpoint-tmp")
  return folder, [f for f in flags if not f.startswith("--gin.MODEL_DIR")]


def test_inference_from_an_incomplete_first_save_says_so(trained):
  folder, flags = _partial_copy(trained, "partial_infer")
  result = palix("infer", *flags[:1], "--gin_file=runs/infer.gin", *flags[2:-1],
                 "--gin.CHECKPOINT_PATH='partial_infer'", "--gin.INFER_OUTPUT_DIR='predictions'",
                 cwd=folder)
  assert error_line(result, 1) == (
      f"palix infer: error: '{folder / 'partial_infer' / 'checkpoints'}' holds only an incomplete "
      "save (1.orbax-checkpoint-tmp), left by a training run stopped while writing it, and no "
      "complete checkpoint; resume the training (palix train ignores it) to write one")


@pytest.mark.slow  # trains a step again (a compilation)
def test_training_over_an_incomplete_first_save_says_it_was_ignored(trained):
  folder, flags = _partial_copy(trained, "partial_train")
  result = palix("train", *flags, "--gin.MODEL_DIR='partial_train'", cwd=folder)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"{folder / 'partial_train' / 'checkpoints'}: found an incomplete save "
          "(1.orbax-checkpoint-tmp), left by a run stopped while writing it; it is ignored and "
          "deleted, there is no complete checkpoint (starting from step 0)"
          ) in log_lines(result.stderr)
  assert (folder / "partial_train" / "checkpoints" / "1").is_dir()


def test_a_bad_value_in_a_configurable_is_one_line_and_debug_adds_the_traceback(trained):
  folder, flags = trained
  bad = ["--gin.optimizers.Optimizer.learning_rate_fn=@schedules.cosine()",
         "--gin.schedules.cosine.total_steps=4", "--gin.schedules.cosine.warmup_steps=10",
         "--gin.MODEL_DIR='fresh'"]
  result = palix("train", *flags, *bad, cwd=folder)
  expected = ("palix train: error: schedules.cosine: total_steps (4) must exceed warmup_steps "
              "(10)")
  assert result.stderr.strip() == expected
  debug = palix("train", *flags, *bad, "--debug", cwd=folder)
  assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
  assert debug.stderr.strip().splitlines()[-1] == expected


@pytest.mark.slow  # imports TensorFlow twice
def test_verbose_keeps_the_libraries_log_lines(data_folder):
  quiet = palix("data", "list", "--module=my_tasks", cwd=data_folder)
  assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-3000:]
  verbose = palix("data", "list", "--module=my_tasks", "--verbose", cwd=data_folder)
  assert verbose.returncode == 0
  assert re.search(r"^[IWE]\d{4} ", verbose.stderr, re.M), verbose.stderr  # TF's C++ log lines
  assert verbose.stdout == quiet.stdout


@pytest.mark.slow  # a training run of a few seconds
def test_ctrl_c_during_training_exits_with_130_after_one_line(trained):
  folder, flags = trained
  flags = [f for f in flags if not f.startswith(("--gin.MODEL_DIR", "--gin.TRAIN_STEPS"))]
  process = subprocess.Popen(
      [sys.executable, "-m", "palix.cli.main", "train", *flags, "--gin.MODEL_DIR='interrupted'",
       "--gin.TRAIN_STEPS=1000", "--gin.synthetic_data.synthetic_batches.seconds_per_batch=0.2",
       "--gin.trainer.train.checkpoint_period=2"],
      cwd=folder, env=_env(), stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + TIMEOUT_S
    while not (folder / "interrupted" / "checkpoints" / "2").is_dir():
      assert process.poll() is None and time.time() < deadline
      time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=TIMEOUT_S)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 130, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == "palix train: interrupted"
  assert (folder / "interrupted" / "checkpoints" / "2").is_dir()  # kept for the resume
