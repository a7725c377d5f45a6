"""Load test of ``palix serve`` on loopback: concurrent clients, with and without request batching.

A random PaLI-X model (fixed seed; T5 with 256-wide 4+4 layers, a 4-layer ViT) is served twice in
this process, with batching (``Batching.batch_sizes = (1, 2, 4, 8)``) and without (``(1,)``),
alternately ``--repeats`` times so that both see the same background load (both apps are built
and compiled once, before the first timed run). ``--clients`` threads of another process
(``serve_load_client``, so that their Python work does not share the server's interpreter lock)
send ``--requests`` distinct requests (different images and prompts, some few-shot, two answer
lengths; every other one streamed) as fast as answers come back. Every answer is checked against
the same request decoded alone by :class:`palix.generate.Generator`: a lost request (error or no
answer), a duplicated one (a stream that goes on after its ``done`` event, or token events that
disagree with the answer) or a mixed-up one (another request's answer) is counted and fails the
run. Reported: p50/p99 latency (request sent -> answer complete), requests/s and answer tokens/s,
and the mean number of requests per decode; and, without HTTP, the decoder alone: 8 of the
requests decoded one by one vs as one batch of 8 (the most batching can give).

Usage: ``python -m palix.eval.perf.serve_load [--requests 64] [--clients 8] [--repeats 2]
[--output docs/results/serve_load.json] [--tiny]``. Bounded: each request times out after
``--timeout`` seconds and the whole run stops after ``--max-seconds``.
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np

from palix import generate
from palix.models.palix_model import PaliXConfig, PaliXModel
from palix.models.t5 import T5Config
from palix.models.vit import ViTConfig
from palix.serve import client as client_lib
from palix.serve.limits import Limits
from palix.serve.request import CompletionRequest, DecodingOptions
from palix.serve.scheduler import Batching
from palix.serve.server import ServerThread, build_app

IMAGE, NUM_IMAGES, MAX_INPUT, MAX_TARGET = 32, 2, 24, 16
PROMPTS = ["caption en", "what is this", "shape en", "colour of the object", "count the dots",
           "detect circle", "name en", "describe the picture"]
MODES = {"batched": (1, 2, 4, 8), "unbatched": (1,)}


def benchmark_model(tiny: bool = False) -> PaliXModel:
  """ViT 128 wide x 4 layers on 32px images (16 patches); T5 256 wide (4 heads of 64, MLP 1024),
  4+4 layers, vocab 2048. ``tiny``: 32 wide, one layer each (a smoke test)."""
  if tiny:
    vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8, image_size=IMAGE)
    t5 = T5Config(vocab_size=2048, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                  num_encoder_layers=1, num_decoder_layers=1)
  else:
    vit = ViTConfig(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8, image_size=IMAGE)
    t5 = T5Config(vocab_size=2048, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                  num_encoder_layers=4, num_decoder_layers=4)
  config = PaliXConfig(vit=vit, t5=t5, max_images=NUM_IMAGES, segment_separator_id=1027)
  return PaliXModel(config, image_size=IMAGE, num_images=NUM_IMAGES, max_input_len=MAX_INPUT,
                    max_target_len=MAX_TARGET)


def make_requests(count: int, seed: int = 0):
  """``(request JSON, query image, prompt, examples, max_new_tokens, streamed)`` per request."""
  rng = np.random.default_rng(seed)
  shot = rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)
  cases = []
  for i in range(count):
    image = rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)
    prompt = PROMPTS[i % len(PROMPTS)]
    examples = [(shot, "name en", "red")] if i % 5 == 0 else []
    length = MAX_TARGET if i % 3 else 8
    request = {"images": [client_lib.image_data_url(image)], "prompt": prompt,
               "examples": [{"image": client_lib.image_data_url(s), "prompt": p, "answer": a}
                            for s, p, a in examples],
               "max_new_tokens": length}
    cases.append((request, image, prompt, examples, length, i % 2 == 0))
  return cases


def check_answers(results, expected) -> dict:
  """Counts of lost, duplicated, mixed-up (another request's answer) and otherwise wrong answers
  in ``results`` (``(latency, answer, problem)`` triples, see ``serve_load_client.send``) against
  ``expected`` (the requests decoded alone), and the first problems in words."""
  texts = {e.text: i for i, e in enumerate(expected)}
  counts = {"lost": 0, "duplicated": 0, "mixed_up": 0, "wrong": 0}
  problems = []
  for i, ((_, answer, problem), want) in enumerate(zip(results, expected)):
    if answer is None:
      counts["duplicated" if problem.startswith("stream") else "lost"] += 1
      problems.append(f"request {i}: {problem}")
    elif answer["tokens"] != list(want.tokens) or answer["text"] != want.text:
      other = texts.get(answer["text"])
      counts["mixed_up" if other is not None and other != i else "wrong"] += 1
      problems.append(f"request {i}: got {answer['text']!r}, alone it is {want.text!r}")
  return dict(counts, problems=problems[:10])


def decode_only_seconds(engine, cases, repeats):
  """Median seconds to answer the first 8 requests (greedy, each to its EOS or MAX_TARGET tokens)
  one at a time and as one batch of 8, timed in turn."""
  options = DecodingOptions(MAX_TARGET)
  inputs = [engine.encode(CompletionRequest((image,), prompt, (), options))
            for _, image, prompt, _, _, _ in cases[:8]]
  alone, together = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    for row in inputs:
      collections.deque(engine.stream([row], [options]), maxlen=0)
    alone.append(time.perf_counter() - start)
    start = time.perf_counter()
    collections.deque(engine.stream(inputs, [options] * len(inputs)), maxlen=0)
    together.append(time.perf_counter() - start)
  return statistics.median(alone), statistics.median(together)


def run_load(app, cases, expected, clients, timeout, deadline):
  """Serves ``app`` and runs the clients (``serve_load_client``) in another process."""
  with tempfile.TemporaryDirectory() as folder, ServerThread(app) as server:
    cases_file, results_file = os.path.join(folder, "cases.json"), os.path.join(folder, "out.json")
    with open(cases_file, "w", encoding="utf-8") as f:
      json.dump([{"request": case[0], "streamed": case[5]} for case in cases], f)
    subprocess.run([sys.executable, "-m", "palix.eval.perf.serve_load_client", server.url,
                    cases_file, results_file, f"--clients={clients}", f"--timeout={timeout}"],
                   check=True, timeout=max(1.0, deadline - time.perf_counter()))
    with open(results_file, encoding="utf-8") as f:
      output = json.load(f)
  wall = output["wall_s"]
  results = [(r["latency_s"], r["answer"], r["problem"]) for r in output["results"]]
  counts = check_answers(results, expected)
  latencies = sorted(r[0] for r in results)
  answered = [r[1] for r in results if r[1] is not None]
  return {
      "requests": len(cases), "clients": clients,
      "wall_s": round(wall, 3), "requests_per_s": round(len(cases) / wall, 2),
      "tokens_per_s": round(sum(len(a["tokens"]) for a in answered) / wall, 1),
      "p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 1),
      "p99_ms": round(1e3 * float(np.percentile(latencies, 99)), 1),
      "mean_requests_per_decode": round(
          statistics.mean(a["batch_size"] for a in answered), 2) if answered else 0.0,
      **counts,
  }


def run(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
  parser.add_argument("--requests", type=int, default=64)
  parser.add_argument("--clients", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
  parser.add_argument("--max-seconds", type=float, default=900.0, help="stop the whole run")
  parser.add_argument("--output", default=None, help="write the figures as JSON here")
  args = parser.parse_args(argv)
  deadline = time.perf_counter() + args.max_seconds

  model = benchmark_model(args.tiny)
  params = nn.meta.unbox(jax.jit(model.get_initial_variables)(jax.random.PRNGKey(0))["params"])
  generator = generate.Generator(model, params)
  cases = make_requests(args.requests)
  expected = [generator.complete(image, prompt, examples, max_decode_len=length)
              for _, image, prompt, examples, length, _ in cases]
  distinct = len({e.text for e in expected})

  apps = {mode: build_app(generator, Limits(), Batching(
      batch_sizes=batch_sizes, queue_size=4 * args.clients, request_timeout_s=args.timeout))
          for mode, batch_sizes in MODES.items()}
  runs = []
  for repeat in range(args.repeats):
    for mode, batch_sizes in MODES.items():
      result = run_load(apps[mode], cases, expected, args.clients, args.timeout, deadline)
      runs.append(dict(result, mode=mode, batch_sizes=list(batch_sizes), repeat=repeat))
      print(f"{mode:9s} #{repeat}: p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} "
            f"ms  {result['requests_per_s']:6.2f} req/s  {result['tokens_per_s']:7.1f} tok/s  "
            f"{result['mean_requests_per_decode']:.2f} requests/decode  lost "
            f"{result['lost']} duplicated {result['duplicated']} mixed-up "
            f"{result['mixed_up']} wrong {result['wrong']}", flush=True)
      for problem in result["problems"]:
        print("  " + problem)

  summary = {}
  for mode in MODES:
    mine = [r for r in runs if r["mode"] == mode]
    summary[mode] = {k: statistics.median(r[k] for r in mine)
                     for k in ("p50_ms", "p99_ms", "requests_per_s", "tokens_per_s",
                               "mean_requests_per_decode")}
  alone_s, together_s = decode_only_seconds(apps["batched"].state.engine, cases,
                                            max(3, args.repeats))
  print(f"decoder alone, 8 requests x {MAX_TARGET} steps: one by one {alone_s * 1e3:.0f} ms, as "
        f"one batch {together_s * 1e3:.0f} ms ({alone_s / together_s:.2f}x)")
  ratio = summary["batched"]["requests_per_s"] / summary["unbatched"]["requests_per_s"]
  print(f"{args.requests} requests ({distinct} distinct answers), {args.clients} clients, "
        f"median of {args.repeats}; batched / unbatched throughput: {ratio:.2f}x; jax "
        f"{jax.__version__} on {jax.devices()[0].platform}, CPUs allowed: "
        f"{len(os.sched_getaffinity(0))}")
  failures = sum(r[k] for r in runs for k in ("lost", "duplicated", "mixed_up", "wrong"))
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"model": "tiny" if args.tiny else "benchmark", "requests": args.requests,
                 "clients": args.clients, "repeats": args.repeats,
                 "distinct_answers": distinct, "throughput_ratio": round(ratio, 2),
                 "decode_only_s": {"one_by_one": round(alone_s, 4),
                                   "batch_of_8": round(together_s, 4)},
                 "summary": summary, "runs": runs, "failures": failures}, f, indent=1)
  return 1 if failures else 0


if __name__ == "__main__":
  raise SystemExit(run())
