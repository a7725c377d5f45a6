"""palix: PaLI-X-style vision-language models in JAX/Flax.

The checkout keeps four top-level folders; an install (``pip install .``, a wheel, or the
Makefile's editable install) nests them under the one ``palix`` package:

==========  ================  ==========================================================
folder      installed as      what
==========  ================  ==========================================================
``palix/``  ``palix``         the library (JAX only, never TensorFlow)
``tasks/``  ``palix.tasks``   SeqIO tasks, data pipeline, vocabulary (TensorFlow); ships
                              ``tasks/assets/*.model`` (the SentencePiece vocabulary)
``eval/``   ``palix.eval``    metrics, evaluator, report, ``eval/perf/`` benchmarks
``gin/``    ``palix/gin/``    gin configs (data only, no Python): ``palix.config.GIN_DIR``
==========  ================  ==========================================================

Exact versions of every transitive dependency are in ``constraints.txt`` (the Makefile installs
with it).
"""

from setuptools import find_packages, setup

CORE = [
    "jax[cpu]==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "numpy==2.4.6",
    "tqdm==4.70.1",
    "tensorboard==2.21.0",
    "pillow==13.0.0",
    "scipy==1.17.1",  # palix.sparsity fits the scaling law with scipy.optimize
    "tensorstore==0.1.86",  # palix.interop.t5x reads T5X's legacy checkpoints (also orbax's)
    "safetensors==0.8.0",  # palix.interop.hf_export writes Hugging Face folders
]
DATA = [
    "seqio==0.0.20",  # pulls clu and tensorflow-datasets (palix imports neither)
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "easy-vqa==1.0",
    "imageio-ffmpeg==0.8.1",
]
EVAL = [
    "pycocotools==2.0.11",
    "pycocoevalcap==1.2",
    "matplotlib==3.11.2",  # palix sparsity plot, experiment figures
]
TEST = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "hypothesis==6.170.17",
    "torch==2.13.0",
    "transformers==5.24.0",
    "playwright==1.65.2",  # drives Debian's chromium in tests/serve (no browser download)
]
SERVE = [  # palix serve
    "starlette==1.10.0",
    "uvicorn==0.54.0",
]

# Folder -> package (see the module docstring). ``palix.gin`` is a data folder, not a module.
PACKAGE_DIRS = {"palix": "palix", "palix.tasks": "tasks", "palix.eval": "eval", "palix.gin": "gin"}
packages = find_packages(include=["palix", "palix.*"])
for package, folder in PACKAGE_DIRS.items():
  if package != "palix":
    packages += [package] + [f"{package}.{p}" for p in find_packages(folder)]

setup(
    name="palix",
    version="0.1.0",
    description="PaLI-X-style vision-language models in JAX/Flax, with SeqIO tasks and gin configs",
    python_requires=">=3.11",
    packages=packages,
    package_dir=PACKAGE_DIRS,
    package_data={"palix.gin": ["**/*.gin"], "palix.tasks": ["assets/*.model"],
                  "palix.sparsity": ["data/*.json"], "palix.serve": ["static/*"]},
    install_requires=CORE,
    extras_require={"data": DATA, "eval": EVAL, "test": TEST, "serve": SERVE,
                    "all": DATA + EVAL + TEST + SERVE},
    entry_points={"console_scripts": ["palix=palix.cli.main:main"]},
)
