#!/usr/bin/env bash
# One device call: palix's GPU suite, the peer anchor, then the ratio table (docs/performance.md,
# "GPU: how to run the check").
#
# Usage, from the repository root:  eval/perf/gpu_check.sh PEER_ANCHOR [--tiny]
#   PEER_ANCHOR: path of peer_anchor.py (the shared workspace's bench/peer_anchor.py, copied into a
#   carried folder such as .bench/ first: files outside the repository do not travel).
# Environment (all optional):
#   PYTHON        interpreter (default python3; the device image's python3 has jax, flax, optax, torch)
#   LOGS          folder for the logs and the table (default $OUT if set, else /tmp/gpu_check)
#   PALIX_ONLY    gpu_suite.py --only (default: all of its workloads)
#   PEER_ONLY     peer_anchor.py --only (default matmul,torch_matmul,timm_vit,hf_t5,hf_paligemma)
#   ITERS         timed repetitions in gpu_suite.py (default 5)
#   PALIX_TIMEOUT, PEER_TIMEOUT  seconds for each part (default 300 and 260), so that a slow part
#                 still leaves the other part and the table inside one 10-minute call.
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
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${PALIX_TIMEOUT:-300}" \
  "$python" eval/perf/gpu_suite.py "${extra[@]}" "${only[@]}" --iters "${ITERS:-5}" 2>&1 \
  | tee "$logs/palix.log"
echo "gpu_suite.py exit status ${PIPESTATUS[0]}"

echo "== peer anchor $anchor"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${PEER_TIMEOUT:-260}" \
  "$python" "$anchor" "${extra[@]}" --only "${PEER_ONLY:-matmul,torch_matmul,timm_vit,hf_t5,hf_paligemma}" \
  2>&1 | tee "$logs/peer.log"
echo "peer_anchor.py exit status ${PIPESTATUS[0]}"

echo "== ratio table"
"$python" eval/perf/gpu_table.py "$logs/palix.log" "$logs/peer.log" | tee "$logs/table.md"
