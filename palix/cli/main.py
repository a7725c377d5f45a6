"""The ``palix`` command: one subcommand per job. Each subcommand lives in its own module."""

import argparse
import importlib
import sys
import traceback

from palix.cli import console

# subcommand -> (module, one-line help). Modules are imported only when their command runs, so
# ``palix params`` never pulls in TensorFlow.
SUBCOMMANDS = {
    "params": ("palix.cli.params", "parameter counts and forward FLOPs of a gin-configured model"),
    "demo": ("palix.cli.demo", "the end-to-end demo (make demo)"),
    "data": ("palix.cli.data", "list tasks and mixtures; show decoded examples as text and a PNG"),
    "vocab": ("palix.cli.vocab", "train the SentencePiece vocabulary from task text"),
    "train": ("palix.cli.train", "train a gin-configured model (gin/runs/pretrain.gin, ...)"),
    "infer": ("palix.cli.infer", "predictions or metrics from a checkpoint (gin/runs/infer.gin)"),
    "eval": ("palix.cli.eval", "benchmark metrics and an HTML report of a checkpoint"),
    "convert": ("palix.cli.convert", "HF, T5X, big_vision checkpoints -> Orbax params + config.gin;"
                " T5/ViT -> HF"),
    "lora": ("palix.cli.lora", "LoRA adapters of a run, alone or merged into a base checkpoint"),
    "owl": ("palix.cli.owl", "OWL-ST: caption queries, pseudo-boxes, ensembles; zero-shot check"),
    "serve": ("palix.cli.serve", "prompt a checkpoint over HTTP: JSON/streaming API, web page"),
    "sparsity": ("palix.cli.sparsity", "sparse scaling law: fit, optimal-sparsity advice, n:m export"),
}


def main(argv=None):
  """Runs ``palix COMMAND ...``; returns the exit code.

  Errors print one line, ``palix COMMAND: error: ...`` (``--debug`` or ``PALIX_DEBUG=1`` adds the
  traceback). Called without ``argv`` (the ``palix`` console script, ``python -m palix.cli.main``)
  it owns the process, and an error ends the process right after its message.
  """
  owns_process = argv is None
  argv, debug, verbose = console.pop_global_flags(list(sys.argv[1:] if argv is None else argv))
  console.configure_library_logs(verbose)  # before any subcommand imports TensorFlow or JAX
  parser = argparse.ArgumentParser(
      prog="palix", description="PaLI-X-style models in JAX/Flax",
      epilog="every command also takes " + ", ".join(
          f"{flag} ({help_text})" for flag, help_text in console.GLOBAL_FLAGS.items()))
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, (_, help_text) in SUBCOMMANDS.items():
    sub.add_parser(name, help=help_text, add_help=False)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
    parser.print_help()
    if argv and argv[0] not in ("-h", "--help"):
      print(f"\npalix: unknown command {argv[0]!r}", file=sys.stderr)
      return 2
    return 0
  prog = f"palix {argv[0]}"
  try:
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.run(argv[1:])
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    code = console.INTERRUPTED_EXIT_CODE
  except Exception as error:  # pylint: disable=broad-except  # every error: one line
    if debug and not owns_process:
      raise
    if debug:
      traceback.print_exc()
    print(console.error_line(prog, error), file=sys.stderr)
    code = console.exit_code(error)
  if owns_process:
    console.end_process(code)
  return code


if __name__ == "__main__":
  sys.exit(main())
