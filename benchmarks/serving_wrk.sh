#!/bin/bash
# The replica alone, before and after, with a second, independent load generator: Debian's
# `wrk` (C; its own cost cannot flatter either side), as issue 18 asks.
#
#   benchmarks/serving_wrk.sh [BASELINE_REV] [ROUNDS] [SECONDS]     (defaults: HEAD 3 6)
#
# Saves the MNIST CNN of serving.py (TorchScript, seed 0), starts the replica of
# BASELINE_REV (extracted with `git archive`) and of this working tree, each on a TCP port
# with the deployment's defaults (max batch 32, 2 ms, all cores), then ROUNDS rounds of
# `wrk -t1 -c{1,32} -dSECONDS` with one v2 JSON request (a Lua script sets the POST body),
# alternating which side goes first. Prints each run (requests/s, p50, p99, non-2xx
# answers) and the load average; stops both replicas and removes its folder.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-HEAD}; ROUNDS=${2:-3}; SECS=${3:-6}
PY=$PWD/.venv/bin/python
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 2; }
DIR=$(mktemp -d /tmp/aidc-bench-wrk-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
git archive "$BASE" extensions/aidc | tar -x -C "$DIR"
"$PY" - "$DIR" <<'PYEOF'
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "benchmarks")
from serving import CNN
from aidc.models import formats
d = Path(sys.argv[1])
x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
fmt, name, sig = formats.save(CNN().eval(), d / "model", example=x)
(d / "args.json").write_text(json.dumps({"artifact": str(d / "model" / name), "signature": sig.to_dict()}))
(d / "post.lua").write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                            f'local f = io.open("{d}/body.json")\nwrk.body = f:read("*a")\nf:close()\n')
(d / "body.json").write_text(json.dumps({"inputs": [{"name": sig.inputs[0].name, "shape": [1, 1, 28, 28],
                                                     "datatype": "FP32", "data": x.ravel().tolist()}]}))
PYEOF
ART=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['artifact'])" "$DIR/args.json")
SIG=$("$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['signature']))" "$DIR/args.json")
start() {  # start TREE PORT LOG
  PYTHONPATH=$1 "$PY" -m aidc.models.server --format torchscript --artifact "$ART" --signature-json "$SIG" \
    --name cnn --version 1 --port "$2" --threads "$(nproc)" > "$3" 2>&1 &
  PIDS+=($!)
}
PB=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
PA=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
start "$DIR/extensions" "$PB" "$DIR/before.log"
start "$PWD/extensions" "$PA" "$DIR/after.log"
for p in "$PB" "$PA"; do
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$p/v2/health/ready" >/dev/null && break; sleep 0.1; done
done
echo "replica alone with wrk: before = $(git rev-parse --short "$BASE"), after = this tree; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  order="$PB $PA"; [ $((r % 2)) = 0 ] && order="$PA $PB"
  for p in $order; do
    side=after; [ "$p" = "$PB" ] && side=before
    for c in 1 32; do
      out=$(wrk -t1 -c$c -d${SECS}s --latency -s "$DIR/post.lua" "http://127.0.0.1:$p/v2/models/cnn/infer")
      printf 'round %s %-6s c=%-2s %s req/s  p50 %s  p99 %s  non-2xx: %s\n' "$r" "$side" "$c" \
        "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" "$(echo "$out" | awk '$1 == "50%" {print $2}')" \
        "$(echo "$out" | awk '$1 == "99%" {print $2}')" "$(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)"
    done
  done
done
echo "load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
