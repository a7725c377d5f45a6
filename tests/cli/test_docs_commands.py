"""Every ``palix`` command in a fenced block of docs/*.md or README.md is checked by the suite.

How, by subcommand (kept cheap: one process, about a minute on 2 cores):

* ``train``, ``infer``, ``eval``: run with ``--dry_run``: the flags, ``--module`` imports, gin
  files and includes, required macros and ``--gin.`` flags nothing reads (``--strict_gin``), without
  the job itself (the jobs have their own tests);
* ``params`` and ``data``: run as written (output files go to a temporary folder);
* the commands in ``COVERED_ELSEWHERE`` need files an earlier step makes or take minutes; the test
  named there runs them (this test checks that it exists and runs that subcommand);
* another subcommand (a new one) must be run by some test through ``palix.cli.main``.

A line ``palix CMD: ...`` is printed output, not a command. The quickstart's own-data section is
replayed in a temporary folder: its shell blocks that write files run first (the data,
``my_tasks.py``, ``my_experiment.gin``), its ``palix`` commands run there, and every record of its
tasks must fit the experiment's ``TASK_FEATURE_LENGTHS``.
"""

import ast
import pathlib
import re
import shlex
import subprocess
import sys

import gin
import pytest

from palix.cli import main as cli_main

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
sys.path.insert(0, str(REPO / "tests" / "training"))  # tiny_model.gin imports the tiny model

DRY_RUN = ("train", "infer", "eval")
RUN = ("params", "data")
# (document, regex on the command) -> (the test that runs it, a string of that run in the test).
COVERED_ELSEWHERE = {
    ("convert.md", r"palix convert"): ("tests/cli/test_convert.py", '["convert", '),
    ("convert.md", r"palix params --gin_file=/tmp/t5_tiny_ckpt"):
        ("tests/cli/test_convert.py", '["params", f"--gin_file={out / \'config.gin\'}"]'),
    ("data.md", r"palix vocab train"): ("tests/tasks/test_data_cli.py", '["vocab", "train", '),
    ("evaluation.md", r"palix eval --module my_tasks"):
        ("tests/eval/test_eval_docs_commands.py", "for command in _commands():"),
    ("sparsity.md", r"palix sparsity (fit|advise|table|plot)"):
        ("tests/sparsity/test_sparsity_cli.py", '["sparsity", "advise", '),
    ("sparsity.md", r"palix sparsity export-nm"):
        ("tests/sparsity/test_pruned_training.py", '["export-nm", '),
    ("sparsity.md", r"palix params --checkpoint"):
        ("tests/sparsity/test_pruned_training.py", 'params_cli.run([f"--checkpoint='),
    ("serving.md", r"palix serve"): ("tests/serve/test_serve_cli.py", "main.main(sys.argv[1:])"),
}
QUICKSTART_OWN_DATA = "## 4. Train on your own JSONL data"
# Shell variables the documented commands use, with values of their kind.
SHELL_VARIABLES = {"$i": "0", "$img": "image.png"}


def _fenced_blocks(text):
  return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def _commands(text):
  """``palix`` command lines (continuations joined) of the fenced blocks, as argument lists."""
  found = []
  for block in _fenced_blocks(text):
    for line in block.replace("\\\n", " ").splitlines():
      match = re.match(r"\s*(?:taskset -c \d+ )?(?:\.venv/bin/)?palix\s+(\S+)(.*)", line)
      if match and not match.group(1).endswith(":"):  # 'palix train: error: ...' is output
        rest = match.group(2)
        for variable, value in SHELL_VARIABLES.items():
          rest = re.sub(re.escape(variable) + r"\b", value, rest)
        words = shlex.split(rest, comments=True)
        ends = [i for i, w in enumerate(words) if w in ("&", "&&", "||", "|", ";") or
                re.match(r"\d?>", w)]  # the shell's, not palix's: '... &', '| tail', '> log'
        found.append((line.strip(), [match.group(1)] + words[:ends[0] if ends else None]))
  return found


def doc_commands():
  cases = []
  for path in DOCS:
    text = path.read_text(encoding="utf-8")
    own_data = text.index(QUICKSTART_OWN_DATA) if QUICKSTART_OWN_DATA in text else len(text)
    for line, args in _commands(text[:own_data]):
      cases.append(pytest.param(path.name, line, args, id=f"{path.name}: {line[:60]}"))
  return cases


def _covered_elsewhere(doc, line, command):
  for (name, pattern), test in COVERED_ELSEWHERE.items():
    if name == doc and re.search(pattern, line):
      return test
  if command in DRY_RUN + RUN:
    return None
  markers = (f'main(["{command}"', f'"palix.cli.main", "{command}"')
  for test in sorted((REPO / "tests").rglob("test_*.py")):
    text = test.read_text(encoding="utf-8")
    marker = next((m for m in markers if m in text), None)
    if marker:
      return str(test.relative_to(REPO)), marker
  return None


def _redirect_outputs(args, folder):
  """``--output=F`` / ``--output F`` go to ``folder`` (the docs write PNGs to the current folder
  or /tmp)."""
  out, redirect = [], False
  for arg in args:
    if redirect:
      arg, redirect = str(folder / pathlib.Path(arg).name), False
    elif arg == "--output":
      redirect = True
    elif arg.startswith("--output="):
      arg = f"--output={folder / pathlib.Path(arg.split('=', 1)[1]).name}"
    out.append(arg)
  return out


def check_command(args, tmp_path, capsys):
  """Runs one documented command as this module's docstring says; returns its stdout."""
  command = args[0]
  assert command in cli_main.SUBCOMMANDS, f"unknown subcommand {command!r}"
  assert command in DRY_RUN + RUN, (f"no test runs `palix {command}`: add one, or map the command "
                                    "in COVERED_ELSEWHERE of tests/cli/test_docs_commands.py")
  gin.clear_config()
  try:
    if command in DRY_RUN:
      with pytest.raises(SystemExit) as info:
        cli_main.main(args + ["--dry_run", "--strict_gin"])
      assert info.value.code == 0, capsys.readouterr().err[-3000:]
      return capsys.readouterr().out
    code = cli_main.main(_redirect_outputs(args, tmp_path))
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert ": warning: " not in err, err  # e.g. a --gin. flag that the command does not read
    return out
  finally:
    gin.clear_config()


@pytest.mark.parametrize("doc, line, args", doc_commands())
def test_documented_command(doc, line, args, tmp_path, monkeypatch, capsys):
  covered_by = _covered_elsewhere(doc, line, args[0])
  if covered_by:
    test, marker = covered_by
    assert (REPO / test).is_file(), f"{line!r}: {test} does not exist"
    assert marker in (REPO / test).read_text(), f"{line!r}: {test} no longer runs {marker}"
    return
  monkeypatch.chdir(REPO)
  check_command(args, tmp_path, capsys)


def _quickstart_section():
  text = (REPO / "docs" / "quickstart.md").read_text(encoding="utf-8")
  start = text.index(QUICKSTART_OWN_DATA)
  return text[start:text.index("\n## ", start + 5) if "\n## " in text[start + 5:] else None]


@pytest.fixture(scope="module")
def quickstart_folder(tmp_path_factory):
  """The quickstart's folder after its file-writing blocks (heredocs) ran."""
  folder = tmp_path_factory.mktemp("quickstart")
  for block in _fenced_blocks(_quickstart_section()):
    for heredoc in re.findall(r"^.*<<'EOF'\n.*?^EOF$", block, flags=re.S | re.M):
      subprocess.run(["bash", "-e", "-c", re.sub(r"^python -", f"{sys.executable} -", heredoc)],
                     cwd=folder, check=True, capture_output=True, timeout=300)
  return folder


def test_quickstart_own_data_commands(quickstart_folder, tmp_path, monkeypatch, capsys):
  commands = _commands(_quickstart_section())
  assert [args[0] for _, args in commands] == ["data", "train", "eval", "infer"]
  monkeypatch.chdir(quickstart_folder)
  for _, args in commands:
    check_command(args, tmp_path, capsys)


def test_quickstart_lengths_fit_every_record(quickstart_folder, monkeypatch):
  """The experiment's TASK_FEATURE_LENGTHS hold every prompt and target of its three tasks (the
  pipeline raises a DataError naming the record otherwise)."""
  from palix.tasks import dataset  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(quickstart_folder)
  monkeypatch.syspath_prepend(str(quickstart_folder))
  import my_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  experiment = (quickstart_folder / "my_experiment.gin").read_text()
  lengths = ast.literal_eval(re.search(r"TASK_FEATURE_LENGTHS = (\{.*\})", experiment).group(1))
  for split, count in (("train", 200), ("test", 40)):
    rows = sum(len(batch["images"]) for batch in dataset.get_batches(
        "my_squares", split=split, batch_size=40, feature_lengths=lengths, image_size=16,
        shuffle=False, repeat=False))
    assert rows >= 3 * count
