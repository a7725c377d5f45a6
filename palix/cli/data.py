"""``palix data list`` / ``palix data show --task NAME``: the registered tasks, and what they yield.

``show`` runs the real training batch pipeline (``palix.tasks.dataset.get_batches``, shuffled and
mixed with ``--seed``) and prints each example's prompt and target decoded back from tokens;
``--output grid.png`` also writes the images with detection boxes drawn. ``--module my.tasks``
imports a module that registers your own tasks first (repeatable).
"""

import argparse

from palix import config as palix_config


def _add_common(parser):
  palix_config.add_module_flag(parser)


def _list(args):
  from palix.tasks import dataset, registry  # pylint: disable=g-import-not-at-top
  from palix.tasks.sources import base  # pylint: disable=g-import-not-at-top
  rows = []
  for name in dataset.list_tasks():
    provider = dataset.get_task_or_mixture(name)
    if not hasattr(provider, "source"):  # a mixture
      tasks, rates = dataset.tasks_and_rates(provider)
      total = sum(rates)
      parts = ", ".join(f"{t.name} {r / total:.0%}" for t, r in zip(tasks, rates))
      rows.append((name, "mixture", "", parts))
      continue
    source = provider.source
    sizes = " ".join(f"{s}={source.num_input_examples(s)}" for s in source.splits) \
        if args.counts else " ".join(source.splits)
    count = source.images_per_example or 1
    kind = ("episode" if name in registry.EPISODE_TASKS else "video" if count > 1 else "image")
    spec = registry.BUILTIN_TASKS.get(name)
    description = spec.description if spec else type(source).__name__
    if isinstance(source, base.TableSource) and args.counts:
      skipped = sum(source.load_report(s).num_skipped for s in source.splits)
      description += f" ({skipped} bad records skipped)" if skipped else ""
    rows.append((name, kind, sizes, description))
  width = max(len(r[0]) for r in rows)
  for name, kind, sizes, description in rows:
    print(f"{name.ljust(width)}  {kind:7s}  {sizes:24s}  {description}")
  return 0


def _show(args):
  from palix.tasks import dataset, show, vocabulary  # pylint: disable=g-import-not-at-top
  from palix.tasks.sources import base  # pylint: disable=g-import-not-at-top
  provider = dataset.get_task_or_mixture(args.task)
  tasks, _ = dataset.tasks_and_rates(provider)
  num_images = args.num_images or max((t.source.images_per_example or 1) for t in tasks)
  for task in tasks:
    if isinstance(task.source, base.TableSource):
      report = task.source.load_report(args.split)
      if report.num_skipped or report.notes:
        print(f"# {task.name}/{args.split}: {report.num_examples} examples, {report.num_skipped} "
              f"bad records skipped; " + "; ".join(report.notes + report.skipped_examples[:3]))
  batch = next(dataset.get_batches(
      args.task, split=args.split, batch_size=args.n,
      feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length},
      num_images=num_images, image_size=args.image_size, seed=args.seed,
      shuffle=not args.in_order, repeat=True, overflow="truncate"))
  texts = show.batch_texts(batch, vocabulary.get_vocabulary())
  for row, (prompt, target) in enumerate(texts):
    print(f"[{row}] images={int((batch['image_mask'][row] > 0).sum())}  prompt: {prompt!r}\n"
          f"     target: {target!r}")
  if args.output:
    show.render_grid(batch, texts, args.output)
    print(f"wrote {args.output}")
  return 0


def run(argv):
  parser = argparse.ArgumentParser(prog="palix data", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="action", required=True)
  listing = sub.add_parser("list", help="registered tasks and mixtures")
  listing.add_argument("--counts", action="store_true", help="load every split to count examples")
  _add_common(listing)
  shown = sub.add_parser("show", help="decoded examples of a task or mixture (+ PNG grid)")
  shown.add_argument("--task", required=True, help="task or mixture name (see `palix data list`)")
  shown.add_argument("--split", default="train")
  shown.add_argument("--n", type=int, default=8, help="number of examples")
  shown.add_argument("--output", default="", help="write a PNG grid here")
  shown.add_argument("--image_size", type=int, default=128)
  shown.add_argument("--num_images", type=int, default=0, help="default: the task's count")
  shown.add_argument("--inputs_length", type=int, default=64)
  shown.add_argument("--targets_length", type=int, default=128)
  shown.add_argument("--seed", type=int, default=0)
  shown.add_argument("--in_order", action="store_true",
                     help="the split's first examples in index order (default: the seeded, mixed "
                     "training stream)")
  _add_common(shown)
  args = parser.parse_args(argv)
  palix_config.import_modules(args.module, parser)
  return _list(args) if args.action == "list" else _show(args)
