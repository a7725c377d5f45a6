"""The clients of the serving load test, in their own process (so that their Python work does not
share the server's interpreter lock): ``python -m palix.eval.perf.serve_load_client URL CASES
RESULTS --clients N --timeout S``.

``CASES`` is a JSON list of ``{"request": {...}, "streamed": bool}``; ``RESULTS`` gets
``{"wall_s": ..., "results": [{"latency_s", "answer", "problem"}, ...]}`` (same order; the wall
time of the timed requests, after two untimed ones). ``N`` threads send the requests as
fast as answers come back; a streamed answer must be one ``done`` event whose tokens are the
stream's token events. Imports only the standard library and ``palix.serve.client``.
"""

import argparse
import concurrent.futures
import json
import time

from palix.serve import client as client_lib


def send(client: client_lib.Client, request: dict, streamed: bool) -> dict:
  """One request: its latency (sent -> answer complete), answer, and problem (None if none)."""
  start = time.perf_counter()
  answer, problem = None, None
  try:
    if not streamed:
      answer = client.complete(request)
    else:
      events = list(client.stream(request))
      done = [data for event, data in events if event == "done"]
      tokens = [data["token"] for event, data in events if event == "token"]
      if len(done) != 1 or tokens != done[0]["tokens"]:
        problem = f"stream events disagree with the answer ({len(done)} done events)"
      else:
        answer = done[0]
  except client_lib.ServerError as e:
    problem = (f"stream {e.message}" if "after its done event" in e.message  # duplicated
               else f"ServerError: {e}")
  except OSError as e:
    problem = f"{type(e).__name__}: {e}"
  return {"latency_s": time.perf_counter() - start, "answer": answer, "problem": problem}


def run(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("url")
  parser.add_argument("cases")
  parser.add_argument("results")
  parser.add_argument("--clients", type=int, default=8)
  parser.add_argument("--timeout", type=float, default=60.0)
  args = parser.parse_args(argv)
  with open(args.cases, encoding="utf-8") as f:
    cases = json.load(f)
  client = client_lib.Client(args.url, timeout=args.timeout)
  for case in cases[:2]:  # the first requests through every path, untimed
    send(client, case["request"], case["streamed"])
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
    results = list(pool.map(lambda case: send(client, case["request"], case["streamed"]), cases))
  wall = time.perf_counter() - start
  with open(args.results, "w", encoding="utf-8") as f:
    json.dump({"wall_s": wall, "results": results}, f)
  return 0


if __name__ == "__main__":
  raise SystemExit(run())
