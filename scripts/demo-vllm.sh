#!/usr/bin/env bash
# The main job on a fresh machine, against a real vLLM: set up and build, create the vLLM
# venv and tiny local model, start a plain `vllm serve` (no preparation at all), attach with
# `on --pid` (built-in config: the whole catalogue), send completions and chat requests
# (sequential and concurrent), print the agent's metrics and status, switch off — vLLM
# keeps serving — and stop vLLM.
#
# Env: VLLM_PORT (default 8000), METRICS (agent listen address, default 127.0.0.1:9464),
#      KEEP_VLLM=1 leaves the server running (its pid is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/vllm-setup.sh

BIN="$PWD/.build/debug/ms-service-metric"
VLLM_PORT=${VLLM_PORT:-8000}
METRICS=${METRICS:-127.0.0.1:9464}
BASE="http://127.0.0.1:$VLLM_PORT"

"$BIN" off >/dev/null 2>&1 || true
echo "== starting vllm serve on $BASE (tiny model, dummy weights; about a minute)"
server=$(bash scripts/vllm-serve.sh --port "$VLLM_PORT")
cleanup() {
    "$BIN" off >/dev/null 2>&1 || true
    if [ "${KEEP_VLLM:-0}" = 1 ]; then echo "vllm serve left running: pid $server"
    else bash scripts/vllm-stop.sh "$server" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
model=$(curl -sf "$BASE/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')

echo "== ms-service-metric on --pid $server"
"$BIN" on --pid "$server" --listen "$METRICS"

completion() {
    curl -sf "$BASE/v1/completions" -H 'Content-Type: application/json' \
        -d "{\"model\": \"$model\", \"prompt\": \"request number $1 says\", \"max_tokens\": $2, \"temperature\": 0}" >/dev/null
}
chat() {
    curl -sf "$BASE/v1/chat/completions" -H 'Content-Type: application/json' \
        -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"hello $1\"}], \"max_tokens\": 8}" >/dev/null
}
echo "== 10 sequential completions, 20 concurrent completions, 5 chats"
for i in $(seq 10); do completion "$i" $((i % 7 + 4)); done
for i in $(seq 20); do completion "c$i" 16 & done
wait $(jobs -p | grep -v "^$server$") 2>/dev/null || true
for i in $(seq 5); do chat "$i"; done

# Metrics arrive within a few milliseconds; the stat logger in the API server runs after
# each engine step, so give the last step's stats one poll.
for _ in $(seq 50); do
    curl -s "http://$METRICS/metrics" | grep -q '^vllm_profiling_server:create_chat_completion:duration_count{dp="-1"} 5' && break
    sleep 0.1
done

echo "== curl http://$METRICS/metrics (counts and sums, gauges, counters)"
curl -s "http://$METRICS/metrics" \
    | grep -E '^vllm_profiling_' | grep -vE '_bucket\{' | grep -vE ' 0$' | sort | head -120

echo "== ms-service-metric status"
"$BIN" status

echo "== ms-service-metric off"
"$BIN" off
completion after-off 4 && echo "vllm still serving after off"
