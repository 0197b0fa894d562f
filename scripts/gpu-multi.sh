#!/usr/bin/env bash
# Multi-GPU check: one device per GPU, each with its own baseline, worker and records; a model
# switched on GPU N runs on GPU N (NVML's per-GPU process lists say so).
# Usage: scripts/gpu-multi.sh AGENT_BINARY
set -u
agent=$1
source "$(dirname "$0")/gpu-env.sh"
work=$(mktemp -d)
cat > "$work/catalog.toml" <<'TOML'
[[model]]
name = "multi-small"
kind = "synthetic"
params = 100_000_000
seed = 3
TOML
"$agent" --listen 127.0.0.1:8478 --catalog "$work/catalog.toml" --state-dir "$work/state" \
  --cache-dir /tmp/vk-gpu-cache --auto-free false --sample-ms 250 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
c() { curl -s -m 300 -X "$1" "localhost:8478$2" -H 'content-type: application/json' ${3:+-d "$3"}; echo; }
cat > "$work/summary.py" <<'PY'
import json, sys
s = json.load(sys.stdin)
print("reason:", s["agent"]["device_reason"])
for d in s["devices"]:
    m = d["memory"]
    pids = [x["pid"] for x in d["models"] if x["pid"]]
    print(f"gpu {d['gpu']}: {d['name']} used {m['used_mb']:.0f} MiB, baseline {m['baseline_mb']:.0f}, "
          f"ghost {d['ghost']['total_mb']:.0f}, active {d['active_model']}, worker pids {pids}")
PY
summary() { c GET /v1/status | python3 "$work/summary.py"; }
summary
n=$(nvidia-smi -L | wc -l)
for g in $(seq 0 $((n - 1))); do
  c POST /v1/models/switch "{\"model\":\"multi-small\",\"gpu\":$g}" | head -c 300; echo
done
sleep 1
summary
for g in $(seq 0 $((n - 1))); do
  echo "nvidia-smi, GPU $g:"; nvidia-smi -i "$g" --query-compute-apps=pid,used_memory --format=csv,noheader
done
c POST /v1/models/unload '{"gpu":1}' | head -c 300; echo
sleep 0.5
summary
kill $pid; wait $pid
tail -5 "$work/err"
