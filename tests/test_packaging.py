"""A wheel of the checkout works on its own: configs and vocabulary inside, run from anywhere.

The wheel is built from a copy of the four source folders (``palix/``, ``tasks/``, ``eval/``,
``gin/``) so the build writes nothing into the checkout. The fast tests read the wheel's file list
and import the unpacked wheel from a folder outside the repository. The slow test installs the
wheel with pip into a fresh virtual environment (no network: ``--no-deps --no-index``) whose only
other packages are the project environment's dependencies, seen through a ``.pth`` file that
leaves the editable palix out, and runs ``palix params`` and the shortened demo there.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("palix", "tasks", "eval", "gin")
VIT_22B_PARAMS = 21750251520  # README's quick check


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  source = tmp_path_factory.mktemp("source")
  shutil.copy(REPO / "setup.py", source)
  for folder in SOURCE_FOLDERS:
    shutil.copytree(REPO / folder, source / folder,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "-q", "-w", str(out), str(source)],
                 check=True, capture_output=True, timeout=300)
  (path,) = out.glob("palix-*.whl")
  return path


def _names(wheel_path):
  with zipfile.ZipFile(wheel_path) as archive:
    return set(archive.namelist())


def test_wheel_ships_every_gin_file_and_the_vocabulary(wheel):
  names = _names(wheel)
  gin_files = {str(p.relative_to(REPO)) for p in (REPO / "gin").rglob("*.gin")}
  assert gin_files and {f"palix/{f}" for f in gin_files} <= names
  for model in (REPO / "tasks" / "assets").glob("*.model"):
    assert f"palix/tasks/assets/{model.name}" in names
  # The folder mapping: tasks/ -> palix.tasks, eval/ -> palix.eval; no test code ships.
  assert {"palix/tasks/dataset.py", "palix/eval/evaluator.py", "palix/cli/main.py"} <= names
  assert not any(n.startswith(("tests/", "tasks/", "eval/", "gin/")) for n in names)


def test_unpacked_wheel_finds_its_configs_from_another_folder(wheel, tmp_path):
  site = tmp_path / "site"
  with zipfile.ZipFile(wheel) as archive:
    archive.extractall(site)
  work = tmp_path / "elsewhere"
  work.mkdir()
  # PYTHONPATH comes before the editable install's finder, so this imports the unpacked wheel.
  env = dict(os.environ, PYTHONPATH=str(site))
  probe = ("import palix, palix.config, palix.tasks.vocabulary as v; "
           "print(palix.__file__); print(palix.config.GIN_DIR); print(v.DEFAULT_MODEL)")
  lines = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
  for line in lines:
    assert pathlib.Path(line).is_relative_to(site), lines
  assert pathlib.Path(lines[1], "runs", "pretrain.gin").is_file()
  assert pathlib.Path(lines[2]).is_file()
  params = subprocess.run([sys.executable, "-m", "palix.cli.main", "params",
                           "--gin_file=models/vit/vit_22b.gin"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
  assert params.returncode == 0, params.stderr[-2000:]
  assert f"total_params: {VIT_22B_PARAMS}" in params.stdout


def _dependencies_without_palix(folder: pathlib.Path) -> pathlib.Path:
  """A folder of links to this environment's site-packages entries, palix's own left out."""
  site = pathlib.Path(sysconfig.get_paths()["purelib"])
  folder.mkdir()
  for entry in site.iterdir():
    if entry.name.startswith(("palix", "__editable__")) or entry.suffix == ".pth":
      continue
    (folder / entry.name).symlink_to(entry)
  return folder


@pytest.mark.slow  # about 2 minutes: a venv, a pip install and the 2-step demo
def test_pip_installed_wheel_runs_params_and_the_short_demo(wheel, tmp_path):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  python = venv / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                            "print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
  deps = _dependencies_without_palix(tmp_path / "deps")
  pathlib.Path(purelib, "project_dependencies.pth").write_text(f"{deps}\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                  "--no-index", "-q", str(wheel)], check=True, timeout=300)
  work = tmp_path / "elsewhere"
  work.mkdir()
  where = subprocess.run([str(python), "-c", "import palix.tasks, palix.eval; "
                          "print(palix.tasks.__file__); print(palix.eval.__file__)"],
                         cwd=work, check=True, capture_output=True, text=True).stdout.split()
  assert all(pathlib.Path(p).is_relative_to(purelib) for p in where), where
  palix = str(venv / "bin" / "palix")
  params = subprocess.run([palix, "params", "--gin_file=models/vit/vit_22b.gin"], cwd=work,
                          capture_output=True, text=True, timeout=300)
  assert params.returncode == 0, params.stderr[-2000:]
  assert f"total_params: {VIT_22B_PARAMS}" in params.stdout
  demo = subprocess.run([palix, "demo", "--steps=2", "--max_eval_examples=2",
                         f"--model_dir={work / 'demo'}"], cwd=work, capture_output=True,
                        text=True, timeout=1200)
  assert demo.returncode == 0, (demo.stdout[-3000:], demo.stderr[-3000:])
  assert "# palix demo results" in demo.stdout
  assert (work / "demo" / "eval" / "metrics.json").is_file()
