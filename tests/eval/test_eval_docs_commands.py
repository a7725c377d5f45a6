"""docs/evaluation.md's ``palix eval`` section: the ``my_tasks.py`` module scores VQAv2-format files
as documented (fast, with a scripted model), and the shell commands run as written (slow)."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

import scripted_models  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOC = os.path.join(REPO, "docs", "evaluation.md")


def _section():
  text = open(DOC, encoding="utf-8").read()
  start = text.index("## `palix eval`: benchmark a checkpoint")
  return text[start:text.index("\n## ", start + 10)]


def _module_code():
  blocks = re.findall(r"```py\n(.*?)```", _section(), flags=re.S)
  assert len(blocks) == 1, "the section shows one module, my_tasks.py"
  return blocks[0]


def _commands():
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", _section(), flags=re.S):
    for command in block.replace("\\\n", " ").split("\n\n"):
      if command.strip():
        commands.append(shlex.split(command))
  return commands


def write_benchmark_files(folder):
  """Two VQAv2 questions (ten answers each) and COCO captions for two val2014 images."""
  os.makedirs(os.path.join(folder, "val2014"), exist_ok=True)
  for image_id, colour in ((1, (220, 20, 20)), (2, (20, 40, 220))):
    pixels = np.full((48, 64, 3), 255, np.uint8)
    pixels[10:30, 15:45] = colour
    Image.fromarray(pixels).save(
        os.path.join(folder, "val2014", f"COCO_val2014_{image_id:012d}.jpg"), quality=95)
  questions = {"data_subtype": "val2014", "questions": [
      {"image_id": 1, "question": "What color is the box?", "question_id": 10},
      {"image_id": 2, "question": "Is the box red?", "question_id": 20}]}
  answers = {10: ["red"] * 10, 20: ["yes"] * 2 + ["no"] * 8}
  annotations = {"annotations": [
      {"question_id": qid, "image_id": qid // 10, "multiple_choice_answer": given[0],
       "answer_type": "other" if qid == 10 else "yes/no", "question_type": "what color",
       "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                   for k, a in enumerate(given)]}
      for qid, given in answers.items()]}
  captions = {"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (1, 2)],
              "annotations": [{"id": 1, "image_id": 1, "caption": "A red box."},
                              {"id": 2, "image_id": 1, "caption": "a red rectangle"},
                              {"id": 3, "image_id": 2, "caption": "A blue box."}]}
  for name, content in (("v2_OpenEnded_mscoco_val2014_questions.json", questions),
                        ("v2_mscoco_val2014_annotations.json", annotations),
                        ("captions_val2014.json", captions)):
    with open(os.path.join(folder, name), "w") as f:
      json.dump(content, f)


def test_my_tasks_module_scores_vqav2_files_with_all_ten_answers(tmp_path, monkeypatch):
  from palix.eval import evaluator  # pylint: disable=g-import-not-at-top
  write_benchmark_files(tmp_path)
  monkeypatch.chdir(tmp_path)
  exec(compile(_module_code(), "my_tasks.py", "exec"), {})  # pylint: disable=exec-used
  results = evaluator.evaluate_tasks(
      scripted_models.OracleModel(), None, "my_vqav2", split="validation",
      task_feature_lengths={"inputs": 32, "targets": 8}, batch_size=2, image_size=32,
      progress=False)
  # The oracle answers multiple_choice_answer: all ten humans agree on question 10 (100); two of
  # ten gave it on question 20: leave-one-out mean of min(1, matches / 3) = (8 * 2/3 + 2 * 1/3)
  # / 10 = 0.6.
  assert results["my_vqav2"].scored.metrics == {
      "vqa_accuracy": pytest.approx(80.0), "vqa_accuracy/other": pytest.approx(100.0),
      "vqa_accuracy/yes/no": pytest.approx(60.0), "num_examples": 2}
  assert list(results) == ["my_vqav2"]
  # Captions: one example per image, every caption of the image a reference.
  from palix.tasks import eval_examples  # pylint: disable=g-import-not-at-top
  (task,) = eval_examples.leaf_tasks("my_coco_captions", "validation")
  batches = eval_examples.evaluation_batches(
      "my_coco_captions", split="validation", batch_size=2,
      feature_lengths={"inputs": 32, "targets": 32}, image_size=32)
  examples = [example for _, chunk in batches for example in chunk]
  targets = [task.postprocess_fn(e["targets"], example=e, is_target=True) for e in examples]
  assert targets == [["A red box.", "a red rectangle"], ["A blue box."]]
  assert [e["image_size"] for e in examples] == [(48, 64), (48, 64)]


@pytest.mark.slow
def test_documented_commands_run(tmp_path):
  """Train, evaluate on easy-VQA, then on the own-files tasks, as the section shows."""
  data = tmp_path / "data"
  write_benchmark_files(data)
  (data / "my_tasks.py").write_text(_module_code())
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  outputs = []
  for command in _commands():
    assert command[0] in (".venv/bin/palix", "palix"), command
    from_repo = command[0] == ".venv/bin/palix"
    args = [sys.executable, "-m", "palix.cli.main"] + [
        a.replace("/tmp/", f"{tmp_path}/") for a in command[1:]]
    result = subprocess.run(args, cwd=REPO if from_repo else data, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs.append(result.stdout)
  assert len(outputs) == 4
  assert "| easy_vqa/vqa_accuracy |" in outputs[1]
  assert "| my_vqav2/vqa_accuracy/yes/no |" in outputs[2]
  assert "| my_coco_captions/CIDEr |" in outputs[3]
  metrics = json.loads((tmp_path / "my_coco_eval" / "metrics.json").read_text())
  assert metrics["my_coco_captions"]["num_examples"] == 2
