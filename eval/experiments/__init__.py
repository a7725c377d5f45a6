"""Experiment drivers (``python -m palix.eval.experiments.NAME``); results go to docs/results/."""
