"""``palix vocab train --output=F --vocab_size=N [--tasks A,B]``: train the SentencePiece model.

The corpus is the prompts and targets of the given tasks' train split (default: every built-in
task). The model has the palix id layout (``palix.tasks.vocabulary``): pad 0, EOS 1, UNK 2, the
1024 ``<locNNNN>`` tokens, ``<sep>`` and 16 reserved ``<extra_N>``, then learned pieces and byte
fallback. ``--vocab_size`` is an upper bound: a small corpus gives fewer pieces.
"""

import argparse


def corpus_lines(task_names, split, max_examples=None):
  """Distinct text lines (prompts and targets) of the tasks, in first-seen order."""
  from palix.tasks import registry  # pylint: disable=g-import-not-at-top  # TensorFlow
  seen = {}
  builtin = [n for n in task_names if n in registry.BUILTIN_TASKS] if task_names else None
  others = [n for n in task_names if n not in registry.BUILTIN_TASKS] if task_names else []
  pairs = (list(registry.builtin_text(builtin, split, max_examples))
           if builtin is None or builtin else [])
  if others:
    from palix.tasks import dataset  # pylint: disable=g-import-not-at-top
    for name in others:
      provider = dataset.get_task_or_mixture(name)
      for task in dataset.tasks_and_rates(provider)[0]:
        pairs.extend(task.source.text_pairs(split))
  for inputs, targets in pairs:
    seen.setdefault(inputs, None)
    seen.setdefault(targets, None)
  return list(seen)


def run(argv):
  parser = argparse.ArgumentParser(prog="palix vocab", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="action", required=True)
  train = sub.add_parser("train", help="train a SentencePiece model from task text")
  train.add_argument("--output", required=True, help="where to write the .model file")
  train.add_argument("--vocab_size", type=int, default=2048, help="upper bound on pieces")
  train.add_argument("--tasks", default="", help="comma-separated task names (default: built-ins)")
  train.add_argument("--split", default="train", help="split whose text is used")
  train.add_argument("--model_type", default="bpe", choices=("bpe", "unigram"),
                     help="bpe keeps whole words on small corpora; unigram fragments them")
  train.add_argument("--max_examples_per_task", type=int, default=1000,
                     help="examples read per generated task (0: all); they render pixels "
                     "to get text")
  args = parser.parse_args(argv)
  from palix.tasks import vocabulary  # pylint: disable=g-import-not-at-top
  names = [n.strip() for n in args.tasks.split(",") if n.strip()]
  lines = corpus_lines(names, args.split, args.max_examples_per_task or None)
  size = vocabulary.train_sentencepiece(lines, args.output, args.vocab_size, args.model_type)
  print(f"wrote {args.output}: {size} pieces from {len(lines)} distinct lines")
  return 0
