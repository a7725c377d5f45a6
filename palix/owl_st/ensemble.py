"""Weight-space ensembles: ``sum_k w_k * params_k`` of checkpoints of one architecture.

OWL-ST's last step averages the self-trained detector with its fine-tuned version (the
fine-tuned one is better on the human-labelled classes, the self-trained one on the open
vocabulary; the average keeps much of both). The result is a params-only checkpoint that
``palix eval``, ``palix infer`` and ``InitialCheckpoint`` read like any other. Checkpoints whose
parameter names or shapes differ are an error that lists the differences.
"""

import pathlib
from typing import Sequence

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from palix.sparsity import counting


def average_checkpoints(paths: Sequence[str], weights: Sequence[float], output_dir: str) -> dict:
  """Writes ``sum_k weights[k] * params(paths[k])`` to ``output_dir`` (a params-only checkpoint
  saved as ``{'params': ...}``). Weights must be non-negative and sum to 1."""
  if len(paths) < 2 or len(paths) != len(weights):
    raise ValueError(f"need two or more checkpoints and one weight each; got {len(paths)} "
                     f"checkpoints and {len(weights)} weights")
  weights = np.asarray(weights, np.float64)
  if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
    raise ValueError(f"ensemble weights must be >= 0 and sum to 1; got {weights.tolist()}")
  trees = [counting.read_checkpoint_params(path) for path in paths]
  first = trees[0]
  for path, tree in zip(paths[1:], trees[1:]):
    problems = sorted(f"{name}: missing in {path}" for name in set(first) - set(tree))
    problems += sorted(f"{name}: only in {path}" for name in set(tree) - set(first))
    problems += sorted(f"{name}: shape {first[name].shape} vs {tree[name].shape} in {path}"
                       for name in set(first) & set(tree) if first[name].shape != tree[name].shape)
    if problems:
      raise ValueError(f"checkpoints {paths[0]} and {path} do not have the same parameters:\n  "
                       + "\n  ".join(problems[:20]))
  averaged = {name: sum(w * tree[name].astype(np.float64) for w, tree in zip(weights, trees))
              .astype(first[name].dtype) for name in first}
  target = pathlib.Path(output_dir).absolute()
  if target.exists() and any(target.iterdir()):
    raise ValueError(f"{output_dir} exists and is not empty; choose a new folder")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(target), {"params": traverse_util.unflatten_dict(averaged, sep="/")},
                      force=True)
  return {"output_dir": str(target), "checkpoints": list(paths), "weights": weights.tolist(),
          "num_params": int(sum(v.size for v in averaged.values()))}
