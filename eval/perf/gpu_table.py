"""The GPU ratio table: palix's ``gpu_suite.py`` figures against the peer anchor's, same call.

Reads the ``RESULT {json}`` lines of both logs and prints one markdown row per palix measurement:
throughput, the peer's, the ratio, the issue's target, and how close the run is to the card's
limits: MFU (model TFLOP/s over the bf16 matmul rate the anchor measured on the same card) for
training, the fraction of the bandwidth limit (``bytes_per_step / bandwidth`` over the measured
``decode_step_ms``) for decoding. Standalone (json only), so it runs wherever the logs are.

Usage: python eval/perf/gpu_table.py PALIX_LOG PEER_LOG [--bandwidth 4.8e12]
"""

import argparse
import json
import sys

# (palix result, its throughput key, peer result, peer throughput key, target ratio, workload)
ROWS = (
    ("palix_vit_l16_train_bf16", "images_per_s", "timm_vit_l16_train_compiled", "img_per_s", 1.3,
     "ViT-L/16 224 px AdamW train, batch 256 (img/s)"),
    ("palix_vit_l16_parallel_qknorm_train_bf16", "images_per_s", "timm_vit_l16_train_compiled",
     "img_per_s", 1.3, "ViT-L/16, ViT-22B parallel block + QK-norm (img/s)"),
    ("palix_t5_large_greedy_bf16", "tokens_per_s", "hf_t5_large_generate_bf16", "tokens_per_s",
     20.0, "T5-v1.1-large greedy, B 64, 256 in, 64 new, fp32 params (tok/s)"),
    ("palix_t5_large_greedy_bf16_params_bfloat16", "tokens_per_s", "hf_t5_large_generate_bf16",
     "tokens_per_s", 20.0, "T5-v1.1-large greedy, bf16 params (tok/s)"),
    ("palix_paligemma3b_shape_greedy_bf16", "tokens_per_s", "hf_paligemma3b_generate_bf16",
     "tokens_per_s", 8.0, "PaLI-X at the PaliGemma-3B shape, B 16, 256+8 in, 64 new (tok/s)"),
)


def read_results(path):
  """``{name: result dict}`` from the ``RESULT {json}`` lines of a log (the last one wins)."""
  results = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.startswith("RESULT "):
        continue
      try:
        result = json.loads(line[len("RESULT "):])
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: RESULT line is not JSON ({e})") from e
      results[result["name"]] = result
  return results


def limits_note(result, matmul_tflops, bandwidth):
  """MFU of a training row, fraction of the bandwidth limit of a decoding row ('' if unknown)."""
  if "train_tflops" in result and matmul_tflops:
    return f"MFU {result['train_tflops'] / matmul_tflops:.0%} of {matmul_tflops:.3g} TFLOP/s"
  if "bytes_per_step" in result and result.get("decode_step_ms", 0) > 0:
    floor_ms = 1e3 * result["bytes_per_step"] / bandwidth
    return (f"{floor_ms / result['decode_step_ms']:.0%} of bandwidth limit "
            f"({floor_ms:.2f} ms floor / {result['decode_step_ms']:.2f} ms step)")
  return ""


def step_breakdown(vit, matmul_tflops):
  """Where the ViT-L step's time goes, from the suite's differential timings."""
  step = vit["step_ms"]
  backward = vit["forward_backward_ms"] - vit["forward_ms"]
  text = (f"ViT-L/16 step {step:.1f} ms: forward {vit['forward_ms']:.1f} "
          f"({vit['forward_ms'] / step:.0%}), backward {backward:.1f} ({backward / step:.0%}), "
          f"optimizer update {vit['optimizer_ms']:.1f} ({vit['optimizer_ms'] / step:.0%}); "
          f"back-to-back steps {vit['async_step_ms']:.1f} ms (host gap per synced step "
          f"{vit['host_gap_ms']:.1f} ms)")
  if matmul_tflops:
    matmul_ms = step * vit["train_tflops"] / matmul_tflops
    text += f"; the model's matmuls at the measured matmul rate would take {matmul_ms:.1f} ms"
  return text


def table(palix, peer, bandwidth):
  matmul = peer.get("jax_matmul_bf16", {}).get("tflops")
  lines = ["| workload | palix | peer | ratio | target | met | limits |",
           "|---|---|---|---|---|---|---|"]
  for name, key, peer_name, peer_key, target, label in ROWS:
    ours, theirs = palix.get(name), peer.get(peer_name)
    ours_value = ours[key] if ours else None
    theirs_value = theirs[peer_key] if theirs else None
    if ours_value and theirs_value:
      ratio = ours_value / theirs_value
      ratio_text, met = f"{ratio:.2f}x", "yes" if ratio >= target else "no"
    else:
      ratio_text, met = "–", "not measured"
    fmt = lambda v, who: f"{v:,.0f}" if v else f"missing ({who})"
    lines.append(f"| {label} | {fmt(ours_value, name)} | {fmt(theirs_value, peer_name)} | "
                 f"{ratio_text} | >= {target:g}x | {met} | "
                 f"{limits_note(ours, matmul, bandwidth) if ours else ''} |")
  membw = palix.get("membw_copy", {}).get("bytes_per_s")
  suite = palix.get("suite", {})
  lines.append("")
  vit = palix.get("palix_vit_l16_train_bf16", {})
  if "forward_ms" in vit:
    lines.append(step_breakdown(vit, matmul))
  lines.append(f"device: {suite.get('device', 'unknown')}, jax {suite.get('jax', 'unknown')}; "
               f"bandwidth limit used: {bandwidth / 1e12:.3g} TB/s; measured copy bandwidth: "
               + (f"{membw / 1e12:.3g} TB/s" if membw else "not measured")
               + "; bf16 matmul (peer anchor, JAX): "
               + (f"{matmul:.3g} TFLOP/s" if matmul else "not measured"))
  if suite.get("tiny"):
    lines.append("TINY SHAPES (--tiny): a rehearsal of the script; these ratios mean nothing.")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("palix_log")
  parser.add_argument("peer_log")
  parser.add_argument("--bandwidth", type=float, default=4.8e12,
                      help="memory bandwidth limit in bytes/s (H200 datasheet: 4.8e12)")
  args = parser.parse_args(argv)
  try:
    palix, peer = read_results(args.palix_log), read_results(args.peer_log)
  except (OSError, ValueError) as e:
    sys.exit(f"gpu_table: {e}")
  print(table(palix, peer, args.bandwidth))


if __name__ == "__main__":
  main()
