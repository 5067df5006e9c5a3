#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, start a plain Python service (no
# preparation at all), attach to it with `on --pid` (the provider is injected live), drive
# the service, print the scrape and the status, switch off — the service keeps running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

BIN="$PWD/.build/debug/ms-service-metric"
SERVICE_PORT=${SERVICE_PORT:-8711}
METRICS=${METRICS:-127.0.0.1:9464}

"$BIN" off >/dev/null 2>&1 || true
if curl -s -o /dev/null "http://127.0.0.1:$SERVICE_PORT/"; then
    echo "demo: port $SERVICE_PORT is taken; set SERVICE_PORT to a free port" >&2
    exit 1
fi
python3 examples/demo_service.py --port "$SERVICE_PORT" &
service=$!
trap '"$BIN" off >/dev/null 2>&1 || true; kill $service 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$SERVICE_PORT/generate?tokens=1" >/dev/null && break; sleep 0.1; done

echo "== ms-service-metric on --pid $service"
"$BIN" on --pid "$service" --config examples/demo_symbols.yaml --listen "$METRICS"

echo "== 20 requests"
for i in $(seq 20); do curl -sf "http://127.0.0.1:$SERVICE_PORT/generate?prompt=request+number+$i&tokens=$((i % 5 + 1))" >/dev/null; done

echo "== curl http://$METRICS/metrics"
curl -s "http://$METRICS/metrics" | grep -E "^(# TYPE|vllm_profiling_.*(_count|_sum)|vllm_profiling_waiting|ms_service_metric_(events|drops))"

echo "== ms-service-metric status"
"$BIN" status

echo "== ms-service-metric off"
"$BIN" off
curl -sf "http://127.0.0.1:$SERVICE_PORT/generate?tokens=1" >/dev/null && echo "service still answering after off"
