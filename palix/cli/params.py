"""``palix params --gin_file=F [--gin.X=V ...]``: parameter counts and forward FLOPs, abstractly.

The gin files must define the ``MODEL`` macro (every file under ``gin/models/`` does). The model is
traced with ``jax.eval_shape`` / ``jax.make_jaxpr``; nothing is allocated, so the 55B pairing runs
on a laptop. The last line is ``total_params: N``.

``palix params --checkpoint=DIR`` counts a stored checkpoint instead (no gin files needed): dense
and non-zero parameters per top-level module, then ``nonzero_params: M`` and ``total_params: N``
(for a pruned run, docs/sparsity.md).
"""

import argparse
import sys

import gin
import jax

from palix import config as palix_config
from palix import gin_usage
from palix import model_stats
from palix.sparsity import counting


@gin.configurable
def model_summary(model=gin.REQUIRED, batch_size: int = 1):
  """Returns ``(params by top-level module, total params, forward FLOPs per example)``."""
  inputs = model.example_inputs(batch_size)
  shapes = model_stats.param_shapes(model.module, inputs)
  by_module = model_stats.params_by_top_level_module(shapes)
  flops = model_stats.forward_flops(lambda p, x: model.module.apply({"params": p}, **x), shapes,
                                    inputs)
  return by_module, model_stats.count_params(shapes), flops // batch_size


def format_summary(by_module, total, flops) -> str:
  width = max([len(k) for k in by_module] + [6])
  lines = [f"{'module'.ljust(width)}  {'params':>18}  share"]
  for name, count in by_module.items():
    lines.append(f"{name.ljust(width)}  {count:>18,}  {100 * count / max(total, 1):5.1f}%")
  lines.append(f"forward_flops_per_example: {flops:.4g}")
  lines.append(f"total_params_billions: {total / 1e9:.3f}")
  lines.append(f"total_params: {total}")
  return "\n".join(lines)


def _checkpoint_summary(path: str) -> int:
  try:
    counts = counting.nonzero_counts(counting.read_checkpoint_params(path))
  except (ValueError, FileNotFoundError) as error:
    print(f"palix params: {error}", file=sys.stderr)
    return 2
  by_module, total = counting.by_top_level_module(counts), counting.totals(counts)
  width = max([len(k) for k in by_module] + [6])
  print(f"{'module'.ljust(width)}  {'params':>18}  {'non-zero':>18}  sparsity")
  for name, c in by_module.items():
    print(f"{name.ljust(width)}  {c.size:>18,}  {c.nonzero:>18,}  {100 * c.sparsity:7.2f}%")
  print(f"sparsity: {total.sparsity:.4f}")
  print(f"nonzero_params: {total.nonzero}")
  print(f"total_params: {total.size}")
  return 0


def run(argv):
  bindings, rest = palix_config.split_gin_bindings(argv)
  parser = argparse.ArgumentParser(prog="palix params", description=__doc__.splitlines()[0])
  palix_config.add_gin_flags(parser)
  parser.add_argument("--checkpoint", help="count the dense and non-zero parameters stored in "
                      "this checkpoint (a run's checkpoints folder, a <step> folder or params-only)")
  args = parser.parse_args(rest)
  if args.checkpoint:
    return _checkpoint_summary(args.checkpoint)
  if not args.gin_file:
    parser.error("at least one --gin_file is required (for example "
                 "--gin_file=gin/models/vit/vit_22b.gin)")
  palix_config.parse_gin(args.gin_file, bindings, args.gin_search_paths, finalize=False)
  unread = gin_usage.unreferenced_macros(bindings)
  try:
    gin.query_parameter("%MODEL")
  except ValueError:
    parser.error(f"the gin files {args.gin_file} do not define the MODEL macro "
                 "(e.g. MODEL = @VisionEncoder())")
  gin.parse_config("palix.cli.params.model_summary.model = %MODEL")
  try:
    with jax.default_device(jax.devices("cpu")[0]):
      summary = model_summary()
  except ValueError as error:  # bad sizes or options in the gin files: no traceback, just what
    print(f"palix params: {error}", file=sys.stderr)
    return 2
  print(format_summary(*summary))
  unread.update(gin_usage.unread_bindings([b for b in bindings if b not in unread]))
  for problem in unread.values():  # a typo such as --gin.VIT_PATCHSIZE=32 counted nothing
    print(f"palix params: warning: {problem}", file=sys.stderr)
  return 0
