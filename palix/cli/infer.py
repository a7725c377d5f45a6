"""``palix infer --gin_file=MODEL.gin --gin_file=runs/infer.gin [--gin.NAME=VALUE ...]``.

Runs the job the run file binds to ``palix.cli.infer.job.fn``: ``runs/infer.gin`` decodes a task
split into a predictions JSONL file (``palix.training.infer.infer``);
``runs/eval_teacher_forced.gin`` computes teacher-forced metrics
(``palix.eval.teacher_forced.evaluate_teacher_forced``). See docs/training.md.

With ``runs/prompt.gin`` and ``--prompt``, it answers one prompt about ``--image`` instead,
zero-shot or with in-context examples from ``--examples`` (a JSONL file of
``{"image": ..., "prompt": ..., "answer": ...}``; relative image paths are read from the file's
folder). See docs/few_shot.md.
"""

import argparse
import json
from typing import List

import gin

from palix import image_records
from palix.training import run_config


@gin.configurable
def job(fn=gin.REQUIRED):
  """Runs ``fn`` (a gin reference to a configured function) and returns its result."""
  return fn()


def read_examples(path: str) -> List[dict]:
  """In-context examples (``image``, ``prompt``, ``answer``) from a JSONL file."""
  fields = ("image", "prompt", "answer")
  return image_records.read_image_records(path, fields, strings=fields, what="--examples")


def run(argv):
  parser = argparse.ArgumentParser(prog="palix infer", description=__doc__.splitlines()[0])
  parser.add_argument("--prompt", default=None,
                      help="answer this prompt (with runs/prompt.gin) instead of running the job")
  parser.add_argument("--image", action="append", default=[],
                      help="query image file (repeat for several, e.g. video frames)")
  parser.add_argument("--examples", default=None,
                      help="JSONL file of in-context examples: image, prompt, answer")
  args = run_config.parse_run_flags(argv, parser)
  if args.prompt is None:
    if args.image or args.examples:
      parser.error("--image and --examples need --prompt")
    result = job()
    run_config.check_command_line_bindings_read()
    print(result if isinstance(result, str) else json.dumps(result, indent=1, sort_keys=True))
    return 0
  if not args.image:
    parser.error("--prompt needs at least one --image")
  from palix import generate  # pylint: disable=g-import-not-at-top
  try:
    examples = read_examples(args.examples) if args.examples else []
    generator = generate.load_generator()
    completion = generator.complete(args.image, args.prompt, examples)
  except ValueError as e:
    parser.error(str(e))
  run_config.check_command_line_bindings_read()
  print(json.dumps({"prompt": args.prompt, "images": args.image, "num_examples": len(examples),
                    "answer": completion.text, "tokens": list(completion.tokens),
                    "logprob": round(completion.logprob, 4), "truncated": completion.truncated}))
  return 0
