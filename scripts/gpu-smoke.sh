#!/usr/bin/env bash
# A first look on the GPU machine: the agent (with --device cuda) picks NVML and CUDA, is
# ready, a worker loads on the GPU NVML names (CUDA_VISIBLE_DEVICES is that GPU's UUID),
# answers, leaks into its pool and is freed. Usage: scripts/gpu-smoke.sh AGENT_BINARY
set -u
agent=$1
source "$(dirname "$0")/gpu-env.sh"
work=$(mktemp -d)
cat > "$work/catalog.toml" <<'TOML'
[[model]]
name = "smoke-f32"
kind = "synthetic"
params = 50_000_000
seed = 1

[[model]]
name = "smoke-f16"
kind = "synthetic"
params = 50_000_000
dtype = "f16"
seed = 1
TOML
"$agent" --listen 127.0.0.1:8479 --catalog "$work/catalog.toml" --state-dir "$work/state" \
  --cache-dir "${VK_CACHE:-/tmp/vk-gpu-cache}" --device cuda --enable-test-ops --auto-free false --sample-ms 250 \
  >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
c() { curl -s -m 300 -X "$1" "localhost:8479$2" -H 'content-type: application/json' ${3:+-d "$3"}; echo; }
echo "readyz: $(curl -s -o /dev/null -w '%{http_code}' localhost:8479/readyz)"
c GET /v1/status | head -c 700; echo
c POST /v1/models/switch '{"model":"smoke-f32"}'
c POST /v1/infer '{"model":"smoke-f32","tokens":[1,2,3,4]}'
worker=$(curl -s localhost:8479/v1/status | python3 -c 'import json,sys; d=json.load(sys.stdin)["devices"][0]; print(next(m["pid"] for m in d["models"] if m["pid"]))')
echo "worker $worker: $(tr '\0' '\n' < /proc/$worker/environ | grep -E '^CUDA_(VISIBLE_DEVICES|DEVICE_ORDER)=' | tr '\n' ' ')"
echo "nvidia-smi: $(nvidia-smi --query-gpu=index,uuid --format=csv,noheader | head -1)"
echo "worker on the GPU per NVML: $(nvidia-smi --query-compute-apps=pid,gpu_uuid --format=csv,noheader | grep "^$worker,")"
c POST /v1/models/switch '{"model":"smoke-f16"}'
c POST /v1/infer '{"model":"smoke-f16","tokens":[1,2,3,4]}'
c POST /v1/debug/leak '{"mib":1024,"pooled":true}'
sleep 1
c GET /v1/status | python3 -c 'import json,sys; d=json.load(sys.stdin)["devices"][0]; print(d["memory"], d["ghost"])'
c POST /v1/gpu/free '{}'
nvidia-smi --query-compute-apps=pid,used_memory --format=csv
kill $pid; wait $pid
echo "--- agent log"; tail -30 "$work/err"
