"""palix: PaLI-X-style vision-language models in JAX/Flax.

Packages: ``palix`` (library, JAX only), ``palix.tasks`` (from ``tasks/``: SeqIO tasks, TensorFlow),
``palix.eval`` (from ``eval/``: metrics and benchmark runners). Exact versions of every transitive
dependency are in ``constraints.txt`` (the Makefile installs with it).
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
    "clu==0.0.12",
    "tensorboard==2.21.0",
    "pillow==13.0.0",
]
DATA = [
    "seqio==0.0.20",
    "tensorflow-cpu==2.21.0",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "easy-vqa==1.0",
    "imageio-ffmpeg==0.8.1",
]
EVAL = [
    "pycocotools==2.0.11",
    "pycocoevalcap==1.2",
]
TEST = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "hypothesis==6.170.17",
    "torch==2.13.0",
    "transformers==5.24.0",
]

packages = find_packages(include=["palix", "palix.*"])
packages += ["palix.tasks"] + ["palix.tasks." + p for p in find_packages("tasks")]
packages += ["palix.eval"] + ["palix.eval." + p for p in find_packages("eval")]

setup(
    name="palix",
    version="0.1.0",
    description="PaLI-X-style vision-language models in JAX/Flax, with SeqIO tasks and gin configs",
    python_requires=">=3.11",
    packages=packages,
    package_dir={"palix": "palix", "palix.tasks": "tasks", "palix.eval": "eval"},
    install_requires=CORE,
    extras_require={"data": DATA, "eval": EVAL, "test": TEST, "all": DATA + EVAL + TEST},
    entry_points={"console_scripts": ["palix=palix.cli.main:main"]},
)
