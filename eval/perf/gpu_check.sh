#!/usr/bin/env bash
# One device call: palix's GPU suite, the peer anchor, then the ratio table (docs/performance.md,
# "GPU: how to run the check").
#
# Usage, from the repository root:  eval/perf/gpu_check.sh PEER_ANCHOR [--tiny]
#   PEER_ANCHOR: path of peer_anchor.py (the shared workspace's bench/peer_anchor.py, copied into a
#   carried folder such as .bench/ first: files outside the repository do not travel).
# Environment (all optional):
#   PYTHON        interpreter (default python3: on the device image it has jax, flax, optax, torch)
#   LOGS          folder for the logs and the table (default $OUT if set, else /tmp/gpu_check)
#   PALIX_ONLY    gpu_suite.py --only (default: all of its workloads)
#   PEER_GROUPS   space-separated peer_anchor.py --only lists, each run as its own process in this
#                 order (default "matmul,hf_paligemma torch_matmul,timm_vit,hf_t5": the PaliGemma
#                 row, never measured beside palix, first)
#   ITERS         timed repetitions in gpu_suite.py (default 5)
#   PALIX_TIMEOUT, PEER_TIMEOUT  seconds for palix's part and for all peer groups together (default
#                 320 and 250), so that a slow part still leaves the rest and the table inside one
#                 10-minute call.
# gin-config is not on the device image: if `import gin` fails, the wheel in .whl/ (carried) is
# installed into /tmp/site first.
set -uo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 PEER_ANCHOR [--tiny]" >&2
  exit 2
fi
anchor=$1
shift
if [[ ! -f $anchor ]]; then
  echo "gpu_check: peer anchor $anchor not found (copy peer_anchor.py into a carried folder)" >&2
  exit 2
fi
extra=("$@")
python=${PYTHON:-python3}
logs=${LOGS:-${OUT:-/tmp/gpu_check}}
mkdir -p "$logs"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

if ! "$python" -c "import gin" 2>/dev/null; then
  if ! ls .whl/gin_config-*.whl >/dev/null 2>&1; then
    echo "gpu_check: gin-config is missing and .whl/ holds no gin_config wheel (carry .whl)" >&2
    exit 2
  fi
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/gin_config-*.whl || exit 2
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
  | tee "$logs/card.txt"
"$python" - <<'EOF' 2>&1 | tee -a "$logs/card.txt"
import importlib
for name in ("jax", "jaxlib", "flax", "optax", "torch", "timm", "transformers"):
  try:
    print(name, importlib.import_module(name).__version__)
  except Exception as e:  # a missing peer library only costs its rows
    print(name, "missing:", type(e).__name__)
EOF

echo "== palix gpu_suite.py"
only=()
[[ -n ${PALIX_ONLY:-} ]] && only=(--only "$PALIX_ONLY")
# No preallocation: the peers run in their own process afterwards, but this keeps the suite's
# footprint honest when parts are run together.
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${PALIX_TIMEOUT:-320}" \
  "$python" eval/perf/gpu_suite.py "${extra[@]}" "${only[@]}" --iters "${ITERS:-5}" 2>&1 \
  | tee "$logs/palix.log"
echo "gpu_suite.py exit status ${PIPESTATUS[0]}"

: >"$logs/peer.log"
deadline=$((SECONDS + ${PEER_TIMEOUT:-250}))
for group in ${PEER_GROUPS:-matmul,hf_paligemma torch_matmul,timm_vit,hf_t5}; do
  left=$((deadline - SECONDS))
  if ((left <= 0)); then
    echo "gpu_check: no time left for peer group $group" | tee -a "$logs/peer.log"
    continue
  fi
  echo "== peer anchor $anchor --only $group (${left}s left)"
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$left" \
    "$python" "$anchor" "${extra[@]}" --only "$group" 2>&1 | tee -a "$logs/peer.log"
  echo "peer_anchor.py exit status ${PIPESTATUS[0]}"
done

echo "== ratio table"
"$python" eval/perf/gpu_table.py "$logs/palix.log" "$logs/peer.log" | tee "$logs/table.md"
