#!/usr/bin/env bash
# Benchmarks against a real vLLM (issue targets beside each figure): the time from
# `on --pid` to the first sample (target <= 3 s), then the throughput with every built-in
# metric on vs the agent off (target: at most 1 % lower). Starts its own `vllm serve`
# (scripts/vllm-serve.sh), stops it at the end.
#
# Usage: bash scripts/bench-vllm.sh [--rounds N] [--requests N] [--concurrency N] [--max-tokens N]
#        (options go to the throughput part; ATTACH_ROUNDS sets the attach rounds, default 3)
# Env:   VLLM_PORT (default 8013); BIN (default: .build/release/ms-service-metric if built,
#        else debug). Needs scripts/setup.sh and scripts/vllm-setup.sh. ~10 min with defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${VLLM_PORT:-8013}
if [ -z "${BIN:-}" ]; then
    BIN=.build/release/ms-service-metric
    [ -x "$BIN" ] || BIN=.build/debug/ms-service-metric
fi
[ -x "$BIN" ] || { echo "bench: no agent binary; run swift build (or swift build -c release)" >&2; exit 2; }
"$BIN" off >/dev/null 2>&1 || true
echo "agent binary: $BIN"
server=$(bash scripts/vllm-serve.sh --port "$PORT")
trap 'bash scripts/vllm-stop.sh "$server" >/dev/null 2>&1 || true' EXIT
echo "== on --pid -> first sample"
python3 scripts/bench_attach_vllm.py --base "http://127.0.0.1:$PORT" --pid "$server" --bin "$BIN" \
    --rounds "${ATTACH_ROUNDS:-3}"
echo
echo "== throughput, all built-ins on vs off"
python3 scripts/bench_vllm_throughput.py --base "http://127.0.0.1:$PORT" --pid "$server" --bin "$BIN" "$@"
