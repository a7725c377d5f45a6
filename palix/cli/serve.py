"""``palix serve --gin_file=MODEL.gin --checkpoint=DIR [--host=127.0.0.1] [--port=8000]``.

Serves the checkpoint over HTTP: the page at ``/``, the JSON API at ``/api/complete``, streaming
(server-sent events) at ``/api/stream``. ``gin/runs/serve.gin`` is always parsed first; gin
bindings set the limits and batching (``--gin.Limits.max_new_tokens=16``,
``--gin.Batching.batch_sizes=(1,)``). See docs/serving.md.
"""

import argparse
import os
import sys

SERVE_GIN = "runs/serve.gin"


def run(argv):
  early = argparse.ArgumentParser(add_help=False)
  early.add_argument("--checkpoint", default=None)
  known, _ = early.parse_known_args(argv)
  parser = argparse.ArgumentParser(prog="palix serve", description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default=None,
                      help="checkpoint folder (training or params-only; sets CHECKPOINT_PATH)")
  parser.add_argument("--host", default=None,
                      help="address to listen on (default 127.0.0.1: this machine only)")
  parser.add_argument("--port", type=int, default=None,
                      help="port to listen on (default 8000; 0 picks a free one)")
  argv = [f"--gin_file={SERVE_GIN}", *argv]
  if known.checkpoint is not None:
    if not os.path.isdir(known.checkpoint):
      parser.error(f"--checkpoint {known.checkpoint}: no such folder")
    argv.append(f"--gin.CHECKPOINT_PATH={os.path.abspath(known.checkpoint)!r}")

  from palix.serve import server  # pylint: disable=g-import-not-at-top  # after the flag checks
  from palix.training import run_config  # pylint: disable=g-import-not-at-top
  args = run_config.parse_run_flags(argv, parser)
  overrides = {k: getattr(args, k) for k in ("host", "port") if getattr(args, k) is not None}
  try:
    server.serve(**overrides)
  except ValueError as e:  # a port in use, limits the model cannot honour, a bad prompt model
    print(f"palix serve: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down: the normal stop
    print("palix serve: stopped", file=sys.stderr)
  return 0
